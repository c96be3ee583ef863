import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { base64urlTwin } from '../../test/helpers/base64url-twin.ts';
import { InternalTokens } from './internal-token.ts';

describe('internal tokens', () => {
  const tokens = new InternalTokens('s'.repeat(40));
  const claims = { principal: null, requestId: 'req_1', method: 'GET', url: '/v1/files' };

  it('verify for their method and URL only', () => {
    const token = tokens.sign(claims);
    assert.deepEqual(tokens.verify(token, 'GET', '/v1/files'), claims);
    assert.equal(tokens.verify(token, 'POST', '/v1/files'), null);
    assert.equal(tokens.verify(token, 'GET', '/v1/files/x'), null);
    assert.equal(new InternalTokens('o'.repeat(40)).verify(token, 'GET', '/v1/files'), null, 'another installation');
  });

  it('refuse a signature written differently, even when it decodes to the same bytes', () => {
    const [version, body, signature] = tokens.sign(claims).split('.') as [string, string, string];
    for (const flip of [1, 2, 3]) {
      assert.equal(tokens.verify(`${version}.${body}.${base64urlTwin(signature, flip)}`, 'GET', '/v1/files'), null);
    }
    const announcement = tokens.signAnnouncement('files@1');
    assert.equal(tokens.verifyAnnouncement('files@1', announcement), true);
    assert.equal(tokens.verifyAnnouncement('files@1', base64urlTwin(announcement, 1)), false);
    assert.equal(tokens.verifyAnnouncement('files@2', announcement), false);
  });
});
