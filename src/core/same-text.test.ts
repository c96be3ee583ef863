import assert from 'node:assert/strict';
import { createHmac } from 'node:crypto';
import { describe, it } from 'node:test';
import { base64urlTwin } from '../../test/helpers/base64url-twin.ts';
import { sameText } from './same-text.ts';

describe('sameText', () => {
  it('tells apart MACs that decode to the same bytes', () => {
    // A 32-byte MAC is 43 base64url characters; the last one carries 4 bits and 2 spare ones.
    const mac = createHmac('sha256', 'k').update('x').digest('base64url');
    const twin = base64urlTwin(mac);
    assert.deepEqual(Buffer.from(twin, 'base64url'), Buffer.from(mac, 'base64url'), 'the decoder cannot tell them apart');
    assert.equal(sameText(twin, mac), false);
    assert.equal(sameText(mac, mac), true);
  });

  it('is false for another length, without throwing', () => {
    assert.equal(sameText('abc', 'abcd'), false);
    assert.equal(sameText('', 'a'), false);
  });
});
