import { sql } from 'kysely';
import type { Db } from '../../../adapters/db/pg.ts';

export interface TenantRow {
  id: string;
  name: string;
  created_at: Date;
}

export async function insertTenant(db: Db, tenant: { id: string; name: string }): Promise<TenantRow | null> {
  const result = await sql<TenantRow>`
    insert into identity.tenant (id, name) values (${tenant.id}, ${tenant.name})
    on conflict do nothing
    returning id, name, created_at`.execute(db);
  return result.rows[0] ?? null;
}

export async function deleteTenant(db: Db, id: string): Promise<void> {
  await sql`delete from identity.tenant where id = ${id}`.execute(db);
}

/** Newest first; `before` is the last id of the previous page. */
export async function listTenants(db: Db, limit: number, before?: string): Promise<TenantRow[]> {
  const result = await sql<TenantRow>`
    select id, name, created_at from identity.tenant
    where ${before === undefined ? sql`true` : sql`id < ${before}`}
    order by id desc limit ${limit}`.execute(db);
  return result.rows;
}

export async function findTenantByName(db: Db, name: string): Promise<TenantRow | null> {
  const result = await sql<TenantRow>`select id, name, created_at from identity.tenant where lower(name) = lower(${name})`.execute(db);
  return result.rows[0] ?? null;
}

export async function tenantExists(db: Db, id: string): Promise<boolean> {
  const result = await sql`select 1 from identity.tenant where id = ${id}`.execute(db);
  return result.rows.length > 0;
}
