import assert from 'node:assert/strict';
import { AppError } from '../../src/core/errors.ts';

/** Asserts that `promise` rejects with the domain's AppError of this status and code (domain unit tests). */
export async function rejectsWith(promise: Promise<unknown>, status: number, code: string): Promise<void> {
  await assert.rejects(promise, (error: unknown) => {
    assert.ok(error instanceof AppError, String(error));
    assert.equal(error.status, status);
    assert.equal(error.code, code);
    return true;
  });
}
