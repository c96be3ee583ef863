import { sql } from 'kysely';
import type { Db, Tx } from '../../../adapters/db/pg.ts';
import type { KeyKind } from '../domain/api-keys.ts';

export interface ApiKeyRow {
  id: string;
  tenant_id: string;
  kind: KeyKind;
  name: string;
  scopes: string[];
  prefix: string;
  created_at: Date;
  revoked_at: Date | null;
}

const columns = sql`id, tenant_id, kind, name, scopes, prefix, created_at, revoked_at`;

export async function insertApiKey(
  db: Db | Tx,
  key: { id: string; tenant_id: string; kind: KeyKind; name: string; scopes: string[]; prefix: string; hash: Buffer },
): Promise<ApiKeyRow> {
  const result = await sql<ApiKeyRow>`
    insert into identity.api_key (id, tenant_id, kind, name, scopes, prefix, hash)
    values (${key.id}, ${key.tenant_id}, ${key.kind}, ${key.name}, ${key.scopes}, ${key.prefix}, ${key.hash})
    returning ${columns}`.execute(db);
  return result.rows[0] as ApiKeyRow;
}

/** Lookup by hash across tenants: authentication happens before the tenant is known. */
export async function findActiveKeyByHash(db: Db, hash: Buffer): Promise<ApiKeyRow | null> {
  const result = await sql<ApiKeyRow>`select ${columns} from identity.api_key where hash = ${hash} and revoked_at is null`.execute(db);
  return result.rows[0] ?? null;
}

export async function listApiKeys(trx: Tx, tenantId: string, limit: number, before?: string): Promise<ApiKeyRow[]> {
  const result = await sql<ApiKeyRow>`
    select ${columns} from identity.api_key
    where tenant_id = ${tenantId} and revoked_at is null and ${before === undefined ? sql`true` : sql`id < ${before}`}
    order by id desc limit ${limit}`.execute(trx);
  return result.rows;
}

/** Returns the revoked key's hash so caches can drop it; null when there was no such key. */
export async function revokeApiKey(trx: Tx, tenantId: string, id: string): Promise<Buffer | null> {
  const result = await sql<{ hash: Buffer }>`
    update identity.api_key set revoked_at = now()
    where tenant_id = ${tenantId} and id = ${id} and revoked_at is null
    returning hash`.execute(trx);
  return result.rows[0]?.hash ?? null;
}
