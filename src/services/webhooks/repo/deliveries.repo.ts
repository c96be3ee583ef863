import { sql } from 'kysely';
import type { Db, Tx } from '../../../adapters/db/pg.ts';

/**
 * SQL of the webhook deliveries (schema `webhooks`): one row per event and endpoint. The
 * consumer inserts (idempotent on the pair), the worker claims what is due by pushing its
 * `next_attempt_at` past a lease (a worker killed mid-send leaves it to be claimed again once
 * the lease ends: at least once), then records the outcome.
 */
export interface DeliveryRow {
  tenant_id: string;
  id: string;
  endpoint_id: string;
  event_id: string;
  type: string;
  payload: string;
  attempt: number;
  status: 'pending' | 'succeeded' | 'failed';
  response_status: number | null;
  error: string | null;
  duration_ms: number | null;
  created_at: Date;
  first_failed_at: Date | null;
  next_attempt_at: Date | null;
  /** The event's traceparent (claims only; listings leave it out). */
  traceparent?: string | null;
}

const columns = sql`tenant_id, id, endpoint_id, event_id, type, payload, attempt, status, response_status, error, duration_ms, created_at, first_failed_at, next_attempt_at`;

export type NewDelivery = Pick<DeliveryRow, 'tenant_id' | 'id' | 'endpoint_id' | 'event_id' | 'type' | 'payload' | 'traceparent'> & {
  /** Written already leased for this long (seconds) to the worker the caller hands it to; due at once without. */
  leaseSeconds?: number;
};

/** Inserts the deliveries not there yet (a redelivered event changes nothing); the ids inserted. */
export async function insertDeliveries(db: Db | Tx, rows: NewDelivery[]): Promise<Set<string>> {
  if (rows.length === 0) return new Set();
  const values = rows.map(
    (r) => sql`(${r.tenant_id}, ${r.id}, ${r.endpoint_id}, ${r.event_id}, ${r.type}, ${r.payload}, 'pending', clock_timestamp() + make_interval(secs => ${r.leaseSeconds ?? 0}), ${r.traceparent ?? null})`,
  );
  const result = await sql<{ id: string }>`
    insert into webhooks.delivery (tenant_id, id, endpoint_id, event_id, type, payload, status, next_attempt_at, traceparent)
    values ${sql.join(values)}
    on conflict (endpoint_id, event_id) do nothing
    returning id`.execute(db);
  return new Set(result.rows.map((row) => row.id));
}

export async function listDeliveries(trx: Tx, tenantId: string, endpointId: string, options: { before?: string; limit: number }): Promise<DeliveryRow[]> {
  const before = options.before ? sql`and id < ${options.before}` : sql``;
  const result = await sql<DeliveryRow>`
    select ${columns} from webhooks.delivery where tenant_id = ${tenantId} and endpoint_id = ${endpointId} ${before}
    order by id desc limit ${options.limit + 1}`.execute(trx);
  return result.rows;
}

/** Makes a delivery due now again, with a fresh retry window; false when there is no such delivery. */
export async function requeueDelivery(trx: Tx, tenantId: string, endpointId: string, id: string): Promise<boolean> {
  const result = await sql`
    update webhooks.delivery set status = 'pending', next_attempt_at = clock_timestamp(), first_failed_at = null
    where tenant_id = ${tenantId} and endpoint_id = ${endpointId} and id = ${id}`.execute(trx);
  return Number(result.numAffectedRows ?? 0) > 0;
}

/**
 * Claims up to `perEndpoint` due deliveries of each enabled endpoint but those in `exclude`
 * (and at most `limit` in all), oldest due first, by moving them `leaseMs` ahead.
 *
 * Bounded whatever the table holds: the endpoints with work are found among the `scan` soonest
 * due rows (index `delivery_due`), then each one's own are read from `delivery_endpoint_due`.
 * "Due" compares with statement_timestamp(), not clock_timestamp(): a volatile bound cannot use
 * an index, and the table keeps every delivery ever made (a sequential scan grew with history:
 * 139 ms per claim at 51,000 due and 100,000 done rows, against 8 ms this way).
 */
export async function claimDue(db: Db, options: { limit: number; perEndpoint: number; exclude: string[]; leaseMs: number; scan: number }): Promise<DeliveryRow[]> {
  const result = await sql<DeliveryRow>`
    with ready as (
      select distinct due.endpoint_id from (
        -- Enabled endpoints only, before the limit: a disabled one keeps its pending rows
        -- (for when it is enabled again), and they must not fill the scan.
        select d.endpoint_id from webhooks.delivery d join webhooks.endpoint e on e.id = d.endpoint_id and e.status = 'enabled'
        where d.status = 'pending' and d.next_attempt_at <= statement_timestamp() and not (d.endpoint_id = any(${options.exclude}::text[]))
        order by d.next_attempt_at limit ${options.scan}
      ) due
    )
    update webhooks.delivery d set next_attempt_at = clock_timestamp() + make_interval(secs => ${options.leaseMs / 1000})
    where d.id = any(array(
        select own.id from ready cross join lateral (
          select id from webhooks.delivery
          where endpoint_id = ready.endpoint_id and status = 'pending' and next_attempt_at <= statement_timestamp()
          order by next_attempt_at limit ${options.perEndpoint}
        ) own
        limit ${options.limit}))
      and d.status = 'pending' and d.next_attempt_at <= statement_timestamp()
    returning ${sql.join(['tenant_id', 'id', 'endpoint_id', 'event_id', 'type', 'payload', 'attempt', 'status', 'response_status', 'error', 'duration_ms', 'created_at', 'first_failed_at', 'next_attempt_at', 'traceparent'].map((c) => sql.ref(`d.${c}`)))}`.execute(db);
  return result.rows;
}

export interface AttemptOutcome {
  status: 'pending' | 'succeeded' | 'failed';
  responseStatus: number | null;
  error: string | null;
  durationMs: number;
  nextAttemptAt: Date | null;
  firstFailedAt: Date | null;
}

/** Makes claimed deliveries that were not sent due again now (a worker stopping). */
export async function releaseClaims(db: Db, ids: string[]): Promise<void> {
  await sql`update webhooks.delivery set next_attempt_at = clock_timestamp() where id = any(${ids}::text[]) and status = 'pending'`.execute(db);
}

/** Records the outcomes of several attempts in one statement (the worker batches those that end together). */
export async function recordAttempts(db: Db, attempts: Array<{ id: string; outcome: AttemptOutcome }>): Promise<void> {
  if (attempts.length === 0) return;
  const column = <T>(pick: (o: AttemptOutcome) => T) => attempts.map((a) => pick(a.outcome));
  await sql`
    update webhooks.delivery d set attempt = d.attempt + 1, status = o.status, response_status = o.response_status, error = o.error,
      duration_ms = o.duration_ms, next_attempt_at = o.next_attempt_at, first_failed_at = o.first_failed_at
    from unnest(${attempts.map((a) => a.id)}::text[], ${column((o) => o.status)}::text[], ${column((o) => o.responseStatus)}::int[],
                ${column((o) => o.error)}::text[], ${column((o) => o.durationMs)}::int[], ${column((o) => o.nextAttemptAt)}::timestamptz[],
                ${column((o) => o.firstFailedAt)}::timestamptz[])
      as o(id, status, response_status, error, duration_ms, next_attempt_at, first_failed_at)
    where d.id = o.id`.execute(db);
}

/** Counts by status, for the metrics. */
export async function pendingCount(db: Db): Promise<number> {
  const result = await sql<{ n: number }>`select count(*)::int as n from webhooks.delivery where status = 'pending'`.execute(db);
  return result.rows[0]?.n ?? 0;
}
