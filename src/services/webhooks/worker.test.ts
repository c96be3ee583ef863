import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { Webhook } from 'standardwebhooks';
import { newSecret, signedHeaders } from './domain/signing.ts';
import { backoffMs } from './worker.ts';

describe('webhook retries and signatures', () => {
  it('backoff grows about threefold per attempt, with jitter between half and all of it, capped at 6 h', () => {
    assert.equal(backoffMs(1, 5000, () => 1), 5000);
    assert.equal(backoffMs(1, 5000, () => 0), 2500);
    assert.equal(backoffMs(2, 5000, () => 1), 15000);
    assert.equal(backoffMs(3, 5000, () => 1), 45000);
    assert.equal(backoffMs(30, 5000, () => 1), 6 * 3600_000);
    for (let attempt = 1; attempt < 20; attempt++) {
      const d = backoffMs(attempt, 5000);
      assert.ok(d >= backoffMs(attempt, 5000, () => 0) && d <= backoffMs(attempt, 5000, () => 1));
    }
  });

  it('signatures verify with the standardwebhooks library, one per secret', () => {
    const [a, b] = [newSecret(), newSecret()];
    const body = JSON.stringify({ id: 'evt_1', type: 'ping' });
    const timestamp = Math.floor(Date.now() / 1000);
    const headers = signedHeaders([a, b], 'evt_1', timestamp, body);
    assert.equal(headers['webhook-signature']?.split(' ').length, 2);
    assert.deepEqual(new Webhook(a).verify(body, headers), { id: 'evt_1', type: 'ping' });
    assert.deepEqual(new Webhook(b).verify(body, headers), { id: 'evt_1', type: 'ping' });
    assert.throws(() => new Webhook(newSecret()).verify(body, headers));
    assert.throws(() => new Webhook(a).verify(`${body} `, headers));
  });
});
