import { sql } from 'kysely';
import type { Tx } from '../../../adapters/db/pg.ts';

export type Role = 'user' | 'admin';

export interface UserRow {
  id: string;
  tenant_id: string;
  email: string;
  name: string;
  role: Role;
  created_at: Date;
  updated_at: Date;
}

export interface UserWithHash extends UserRow {
  password_hash: string;
}

/** The user's public columns (everything but the password hash). */
export const userColumns = sql`id, tenant_id, email, name, role, created_at, updated_at`;

/** PostgreSQL's unique_violation: the email is taken in this tenant. */
export function isUniqueViolation(error: unknown): boolean {
  return (error as { code?: string } | null)?.code === '23505';
}

export async function insertUser(
  trx: Tx,
  user: { id: string; tenant_id: string; email: string; name: string; role: Role; password_hash: string },
): Promise<UserRow> {
  const result = await sql<UserRow>`
    insert into identity.app_user (id, tenant_id, email, name, role, password_hash)
    values (${user.id}, ${user.tenant_id}, ${user.email}, ${user.name}, ${user.role}, ${user.password_hash})
    returning ${userColumns}`.execute(trx);
  return result.rows[0] as UserRow;
}

/** The user with this email (compared case-insensitively), as a statement for a tenantBatch. */
export function userByEmailSelect(tenantId: string, email: string) {
  return sql<UserWithHash>`
    select ${userColumns}, password_hash from identity.app_user
    where tenant_id = ${tenantId} and lower(email) = lower(${email})`;
}

export async function findUserByEmail(trx: Tx, tenantId: string, email: string): Promise<UserWithHash | null> {
  const result = await userByEmailSelect(tenantId, email).execute(trx);
  return result.rows[0] ?? null;
}

export async function findUser(trx: Tx, tenantId: string, id: string): Promise<UserWithHash | null> {
  const result = await sql<UserWithHash>`
    select ${userColumns}, password_hash from identity.app_user where tenant_id = ${tenantId} and id = ${id}`.execute(trx);
  return result.rows[0] ?? null;
}

/** Locks the row so concurrent changes to one user apply one after the other; as a statement for a tenantBatch. */
export function userLockSelect(tenantId: string, id: string) {
  return sql<UserWithHash>`
    select ${userColumns}, password_hash from identity.app_user where tenant_id = ${tenantId} and id = ${id} for update`;
}

export async function lockUser(trx: Tx, tenantId: string, id: string): Promise<UserWithHash | null> {
  const result = await userLockSelect(tenantId, id).execute(trx);
  return result.rows[0] ?? null;
}

export async function listUsers(trx: Tx, tenantId: string, limit: number, before?: string): Promise<UserRow[]> {
  const result = await sql<UserRow>`
    select ${userColumns} from identity.app_user
    where tenant_id = ${tenantId} and ${before === undefined ? sql`true` : sql`id < ${before}`}
    order by id desc limit ${limit}`.execute(trx);
  return result.rows;
}

export async function updateUser(
  trx: Tx,
  tenantId: string,
  id: string,
  changes: { email?: string; name?: string; role?: Role; password_hash?: string },
): Promise<UserRow | null> {
  const result = await sql<UserRow>`
    update identity.app_user set
      email = coalesce(${changes.email ?? null}, email),
      name = coalesce(${changes.name ?? null}, name),
      role = coalesce(${changes.role ?? null}, role),
      password_hash = coalesce(${changes.password_hash ?? null}, password_hash),
      updated_at = now()
    where tenant_id = ${tenantId} and id = ${id}
    returning ${userColumns}`.execute(trx);
  return result.rows[0] ?? null;
}

export async function deleteUser(trx: Tx, tenantId: string, id: string): Promise<UserRow | null> {
  const result = await sql<UserRow>`delete from identity.app_user where tenant_id = ${tenantId} and id = ${id} returning ${userColumns}`.execute(trx);
  return result.rows[0] ?? null;
}
