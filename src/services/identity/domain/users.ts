import { createHash, randomBytes } from 'node:crypto';
import type { Principal } from '../../../core/principal.ts';
import type { Role, UserRow } from '../repo/users.repo.ts';

/** A user as clients see it: never the password hash. */
export interface User {
  id: string;
  email: string;
  name: string;
  role: Role;
  created_at: string;
  updated_at: string;
}

export type { Role };

export const toUser = (row: UserRow): User => ({
  id: row.id,
  email: row.email,
  name: row.name,
  role: row.role,
  created_at: row.created_at.toISOString(),
  updated_at: row.updated_at.toISOString(),
});

export type KeyPrincipal = Extract<Principal, { kind: 'account_key' | 'application_key' }>;
/**
 * A user principal as identity's own token verifier makes it: the core principal plus the
 * login session (refresh token family) the token was issued in, which lets a password
 * change end every other session but the caller's. Absent if another verifier made it.
 */
export type UserPrincipal = Extract<Principal, { kind: 'user' }> & { sessionId?: string };

/** Opaque single-purpose secrets (refresh and reset tokens): 256 random bits. */
export function newOpaqueToken(prefix: string): string {
  return `${prefix}_${randomBytes(32).toString('base64url')}`;
}

export function hashToken(token: string): Buffer {
  return createHash('sha256').update(token).digest();
}

export function normaliseEmail(email: string): string {
  return email.trim();
}
