import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { base64urlTwin } from '../../../../test/helpers/base64url-twin.ts';
import { DownloadTokens } from './download-token.ts';

describe('export download tokens', () => {
  const tokens = new DownloadTokens('k'.repeat(40));
  const inADay = new Date(Date.now() + 86_400_000);

  it('verifies for its export until it expires', () => {
    const token = tokens.sign('exp_1', 'test', inADay);
    assert.equal(tokens.verify('exp_1', token), 'test');
    assert.equal(tokens.verify('exp_1', token, inADay.getTime() + 1000), null, 'expired');
    assert.equal(tokens.verify('exp_2', token), null, 'another export');
  });

  it('refuses forged, altered and foreign tokens', () => {
    const token = tokens.sign('exp_1', 'test', inADay);
    const [env, expires, mac] = token.split('.') as [string, string, string];
    assert.equal(tokens.verify('exp_1', `live.${expires}.${mac}`), null, 'environment changed');
    assert.equal(tokens.verify('exp_1', `${env}.${Number(expires) + 3600}.${mac}`), null, 'expiry pushed back');
    assert.equal(tokens.verify('exp_1', `${env}.${expires}.${'A'.repeat(43)}`), null);
    assert.equal(tokens.verify('exp_1', 'garbage'), null);
    for (const flip of [1, 2, 3]) {
      // Only the last character's spare bits change: the MAC decodes to the same bytes.
      const twin = base64urlTwin(mac, flip);
      assert.equal(tokens.verify('exp_1', `${env}.${expires}.${twin}`), null, `last character ${mac.at(-1)} → ${twin.at(-1)}`);
    }
    assert.equal(new DownloadTokens('o'.repeat(40)).verify('exp_1', token), null, 'another installation');
  });
});
