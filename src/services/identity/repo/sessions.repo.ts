import { sql } from 'kysely';
import type { Tx } from '../../../adapters/db/pg.ts';
import type { NewAuditEvent } from './audit.repo.ts';
import { type UserWithHash, userColumns } from './users.repo.ts';

/** Refresh tokens (grouped in families, one per login) and password reset tokens. */
export interface RefreshTokenRow {
  id: string;
  tenant_id: string;
  user_id: string;
  family_id: string;
  expires_at: Date;
  used_at: Date | null;
  revoked_at: Date | null;
}

export interface NewRefreshToken {
  id: string;
  tenant_id: string;
  user_id: string;
  family_id: string;
  hash: Buffer;
  expires_at: Date;
}

/**
 * A login's write as one statement, for a tenantBatch: locks the user (it may have changed
 * while the password was checked), and only if it still exists opens the session and
 * writes the audit entry. Answers the locked user, or no row when it was deleted meanwhile
 * (then nothing is written). One statement instead of three: a login is a hot path.
 */
export function loginSessionInsert(userId: string, token: NewRefreshToken, audit: NewAuditEvent) {
  return sql<UserWithHash>`
    with locked as (
      select ${userColumns}, password_hash from identity.app_user where tenant_id = ${token.tenant_id} and id = ${userId} for update
    ), session as (
      insert into identity.refresh_token (id, tenant_id, user_id, family_id, hash, expires_at)
      select ${token.id}, locked.tenant_id, locked.id, ${token.family_id}, ${token.hash}, ${token.expires_at} from locked
    ), audit as (
      insert into identity.audit_event (id, tenant_id, type, actor, ip, detail)
      select ${audit.id}, locked.tenant_id, ${audit.type}, ${audit.actor === null ? null : JSON.stringify(audit.actor)}::jsonb, ${audit.ip},
             ${JSON.stringify(audit.detail)}::jsonb from locked
    )
    select * from locked`;
}

/** The insert as a statement, for a tenantBatch. Fails with a foreign key violation when the user is gone. */
export function refreshTokenInsert(token: NewRefreshToken) {
  return sql`
    insert into identity.refresh_token (id, tenant_id, user_id, family_id, hash, expires_at)
    values (${token.id}, ${token.tenant_id}, ${token.user_id}, ${token.family_id}, ${token.hash}, ${token.expires_at})`;
}

export async function insertRefreshToken(trx: Tx, token: NewRefreshToken): Promise<void> {
  await refreshTokenInsert(token).execute(trx);
}

/** Locks the token's row: two concurrent uses of one token are serialised, the second sees it spent. */
export async function lockRefreshTokenByHash(trx: Tx, tenantId: string, hash: Buffer): Promise<RefreshTokenRow | null> {
  const result = await sql<RefreshTokenRow>`
    select id, tenant_id, user_id, family_id, expires_at, used_at, revoked_at from identity.refresh_token
    where tenant_id = ${tenantId} and hash = ${hash} for update`.execute(trx);
  return result.rows[0] ?? null;
}

export async function markRefreshTokenUsed(trx: Tx, tenantId: string, id: string): Promise<void> {
  await sql`update identity.refresh_token set used_at = now() where tenant_id = ${tenantId} and id = ${id}`.execute(trx);
}

export async function revokeFamily(trx: Tx, tenantId: string, familyId: string): Promise<number> {
  const result = await sql`
    update identity.refresh_token set revoked_at = now()
    where tenant_id = ${tenantId} and family_id = ${familyId} and revoked_at is null`.execute(trx);
  return Number(result.numAffectedRows ?? 0);
}

/**
 * Revokes every live refresh token of a user, except those of `keepFamily` when given.
 * Answers how many tokens, and the sessions (families) that ended: their access tokens must
 * be refused too (see TokenRevocations).
 */
export async function revokeUserTokens(trx: Tx, tenantId: string, userId: string, keepFamily?: string): Promise<{ tokens: number; sessions: string[] }> {
  const result = await sql<{ family_id: string }>`
    update identity.refresh_token set revoked_at = now()
    where tenant_id = ${tenantId} and user_id = ${userId} and revoked_at is null
      and ${keepFamily === undefined ? sql`true` : sql`family_id <> ${keepFamily}`}
    returning family_id`.execute(trx);
  return { tokens: result.rows.length, sessions: [...new Set(result.rows.map((row) => row.family_id))] };
}

/**
 * One row when the user still has this session (a refresh token of the family not revoked;
 * a deleted user's went with it); a statement for tenantRead. What a token check asks the
 * database when the revocation list cannot answer.
 */
export function liveSessionSelect(tenantId: string, userId: string, familyId: string) {
  return sql<{ live: number }>`
    select 1 as live from identity.refresh_token
    where tenant_id = ${tenantId} and family_id = ${familyId} and user_id = ${userId} and revoked_at is null
    limit 1`;
}

export interface PasswordResetRow {
  id: string;
  user_id: string;
  expires_at: Date;
  used_at: Date | null;
}

export async function insertPasswordReset(
  trx: Tx,
  reset: { id: string; tenant_id: string; user_id: string; hash: Buffer; expires_at: Date },
): Promise<void> {
  await sql`
    insert into identity.password_reset (id, tenant_id, user_id, hash, expires_at)
    values (${reset.id}, ${reset.tenant_id}, ${reset.user_id}, ${reset.hash}, ${reset.expires_at})`.execute(trx);
}

export async function lockPasswordResetByHash(trx: Tx, tenantId: string, hash: Buffer): Promise<PasswordResetRow | null> {
  const result = await sql<PasswordResetRow>`
    select id, user_id, expires_at, used_at from identity.password_reset
    where tenant_id = ${tenantId} and hash = ${hash} for update`.execute(trx);
  return result.rows[0] ?? null;
}

/** Spends every outstanding reset token of the user: one reset ends them all. */
export async function usePasswordResets(trx: Tx, tenantId: string, userId: string): Promise<void> {
  await sql`
    update identity.password_reset set used_at = now()
    where tenant_id = ${tenantId} and user_id = ${userId} and used_at is null`.execute(trx);
}
