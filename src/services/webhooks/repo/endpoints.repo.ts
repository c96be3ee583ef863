import { sql } from 'kysely';
import type { Db, Tx } from '../../../adapters/db/pg.ts';

/**
 * SQL of the webhook endpoints (schema `webhooks`). Tenant-bound functions take a transaction
 * from `withTenant` and still name their tenant (isolation is enforced twice); those taking a
 * `Db` work across tenants, for the bus consumer and the delivery worker.
 */
export interface EndpointRow {
  tenant_id: string;
  id: string;
  url: string;
  events: string[];
  description: string | null;
  status: 'enabled' | 'disabled';
  secret: Buffer;
  previous_secret: Buffer | null;
  previous_expires_at: Date | null;
  created_at: Date;
  updated_at: Date;
}

const columns = sql`tenant_id, id, url, events, description, status, secret, previous_secret, previous_expires_at, created_at, updated_at`;

export async function insertEndpoint(trx: Tx, row: Omit<EndpointRow, 'created_at' | 'updated_at' | 'previous_secret' | 'previous_expires_at'>): Promise<EndpointRow> {
  const result = await sql<EndpointRow>`
    insert into webhooks.endpoint (tenant_id, id, url, events, description, status, secret)
    values (${row.tenant_id}, ${row.id}, ${row.url}, ${row.events}::text[], ${row.description}, ${row.status}, ${row.secret})
    returning ${columns}`.execute(trx);
  return result.rows[0] as EndpointRow;
}

/** Newest first, after the id `before` when given; `limit + 1` rows to tell whether a next page exists. */
export async function listEndpoints(trx: Tx, tenantId: string, options: { before?: string; limit: number }): Promise<EndpointRow[]> {
  const before = options.before ? sql`and id < ${options.before}` : sql``;
  const result = await sql<EndpointRow>`
    select ${columns} from webhooks.endpoint where tenant_id = ${tenantId} ${before}
    order by id desc limit ${options.limit + 1}`.execute(trx);
  return result.rows;
}

export async function findEndpoint(trx: Tx, tenantId: string, id: string): Promise<EndpointRow | null> {
  const result = await sql<EndpointRow>`select ${columns} from webhooks.endpoint where tenant_id = ${tenantId} and id = ${id}`.execute(trx);
  return result.rows[0] ?? null;
}

export interface EndpointChange {
  url?: string;
  events?: string[];
  description?: string | null;
  status?: 'enabled' | 'disabled';
}

export async function updateEndpoint(trx: Tx, tenantId: string, id: string, change: EndpointChange): Promise<EndpointRow | null> {
  const result = await sql<EndpointRow>`
    update webhooks.endpoint set
      url = coalesce(${change.url ?? null}, url),
      events = coalesce(${change.events ?? null}::text[], events),
      description = case when ${change.description !== undefined} then ${change.description ?? null} else description end,
      status = coalesce(${change.status ?? null}, status),
      updated_at = now()
    where tenant_id = ${tenantId} and id = ${id}
    returning ${columns}`.execute(trx);
  return result.rows[0] ?? null;
}

export async function deleteEndpoint(trx: Tx, tenantId: string, id: string): Promise<boolean> {
  const result = await sql`delete from webhooks.endpoint where tenant_id = ${tenantId} and id = ${id}`.execute(trx);
  return Number(result.numAffectedRows ?? 0) > 0;
}

/** The new secret signs from now on; the one it replaces keeps signing beside it until `previousExpiresAt`. */
export async function rotateSecret(trx: Tx, tenantId: string, id: string, secret: Buffer, previousExpiresAt: Date): Promise<boolean> {
  const result = await sql`
    update webhooks.endpoint set previous_secret = secret, previous_expires_at = ${previousExpiresAt}, secret = ${secret}, updated_at = now()
    where tenant_id = ${tenantId} and id = ${id}`.execute(trx);
  return Number(result.numAffectedRows ?? 0) > 0;
}

/** The enabled endpoints of these tenants, for the consumer to match events against (whole: it may hand their deliveries to the worker). */
export async function enabledEndpointsOf(db: Db, tenantIds: string[]): Promise<EndpointRow[]> {
  if (tenantIds.length === 0) return [];
  const result = await sql<EndpointRow>`select ${columns} from webhooks.endpoint where tenant_id = any(${tenantIds}::text[]) and status = 'enabled'`.execute(db);
  return result.rows;
}

/** What the worker needs of endpoints to send: where, and with which secrets. */
export async function endpointsByIds(db: Db, ids: string[]): Promise<EndpointRow[]> {
  if (ids.length === 0) return [];
  const result = await sql<EndpointRow>`select ${columns} from webhooks.endpoint where id = any(${ids}::text[])`.execute(db);
  return result.rows;
}

/** Disables an endpoint the worker gave up on; true when it was enabled until now. */
export async function disableEndpoint(db: Db, id: string): Promise<boolean> {
  const result = await sql`update webhooks.endpoint set status = 'disabled', updated_at = now() where id = ${id} and status = 'enabled'`.execute(db);
  return Number(result.numAffectedRows ?? 0) > 0;
}
