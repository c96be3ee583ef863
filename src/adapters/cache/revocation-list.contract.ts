import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import type { RevocationList } from '../../core/ports.ts';

/**
 * The contract every RevocationList driver passes (memory, Redis). `pair` gives two handles on
 * one empty list, as two processes of one installation see it (for memory, the same object
 * twice). Expiry is real time (Redis keeps its own clock): short, with room for a round trip.
 */
export interface RevocationListHarness {
  pair(): Promise<[RevocationList, RevocationList]>;
}

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

export function revocationListContract(driver: string, harness: RevocationListHarness): void {
  describe(`RevocationList contract: ${driver}`, () => {
    it('nothing is revoked until revoked; then exactly those ids are', async () => {
      const [list] = await harness.pair();
      assert.equal(await list.anyRevoked(['user:usr_1']), false);
      assert.equal(await list.anyRevoked([]), false);
      await list.revoke(['user:usr_1', 'session:ses_1'], 60_000);
      assert.equal(await list.anyRevoked(['user:usr_1']), true);
      assert.equal(await list.anyRevoked(['session:ses_1']), true);
      assert.equal(await list.anyRevoked(['user:usr_2', 'session:ses_1']), true, 'any of several');
      assert.equal(await list.anyRevoked(['user:usr_2', 'session:ses_2']), false);
      assert.equal(await list.anyRevoked(['user:USR_1']), false, 'ids are compared exactly');
    });

    it('a revocation made through one handle holds through the other at once', async () => {
      const [one, two] = await harness.pair();
      await one.revoke(['session:ses_shared'], 60_000);
      assert.equal(await two.anyRevoked(['user:usr_x', 'session:ses_shared']), true);
    });

    it('forgets a revocation once its ttl has passed; revoking again starts it anew', async () => {
      const [list] = await harness.pair();
      await list.revoke(['user:short'], 100);
      assert.equal(await list.anyRevoked(['user:short']), true);
      await sleep(150);
      assert.equal(await list.anyRevoked(['user:short']), false);
      await list.revoke(['user:short'], 60_000);
      assert.equal(await list.anyRevoked(['user:short']), true);
    });

    it('revoking nothing is allowed', async () => {
      const [list] = await harness.pair();
      await list.revoke([], 60_000);
      assert.equal(await list.anyRevoked(['user:none']), false);
    });
  });
}
