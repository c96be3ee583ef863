import { createHash } from 'node:crypto';
import { Errors, fail } from '../../../core/errors.ts';
import type { FileObject } from '../../../core/events.ts';
import type { TenantPrincipal } from '../../../core/principal.ts';

/**
 * Idempotency-Key: a retried write replays its first answer, a different request under the
 * same key is refused. Pure: what is recorded, and where, is the files service's concern.
 */

/** A request's Idempotency-Key and the fingerprint of what it asked. */
export interface Idempotency {
  key: string;
  fingerprint: string;
}

/** What a write answers: the file, with the status, and whether it is the replay of an earlier answer. */
export interface WriteAnswer {
  status: number;
  file: FileObject;
  replayed: boolean;
}

/** An answer recorded under an Idempotency-Key, with the fingerprint of the request that got it. */
export interface RecordedAnswer {
  fingerprint: string;
  status: number;
  response: unknown;
}

/** Idempotency keys belong to one caller: a user, or a key. */
export function principalKey(principal: TenantPrincipal): string {
  return principal.kind === 'user' ? `user:${principal.userId}` : `key:${principal.keyId}`;
}

/**
 * What a request asked, as one hash: the operation, the caller, the content and whatever else
 * changes the outcome. Two requests with the same fingerprint are the same request.
 */
export function fingerprintOf(operation: readonly string[], principal: TenantPrincipal, sha256: string, params: readonly unknown[]): string {
  return createHash('sha256')
    .update(JSON.stringify([...operation, principalKey(principal), sha256, ...params]))
    .digest('hex');
}

/** Replays a recorded answer when the fingerprints agree; a different request under the same key is a 409. */
export function replayOf(recorded: RecordedAnswer, fingerprint: string): WriteAnswer {
  if (recorded.fingerprint !== fingerprint) {
    fail(Errors.idempotencyConflict, 'This Idempotency-Key was used for a different request; use a new key for a new request');
  }
  return { status: recorded.status, file: recorded.response as FileObject, replayed: true };
}
