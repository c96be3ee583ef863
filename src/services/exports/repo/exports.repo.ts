import { sql } from 'kysely';
import type { Db, Tx } from '../../../adapters/db/pg.ts';

/**
 * SQL of the exports service. Reads and writes on behalf of a caller name its tenant (and the
 * RLS binding holds it too); the worker's and the sweep's run across tenants, as the files
 * sweep does.
 */
export interface ExportRow {
  id: string;
  tenant_id: string;
  creator: string;
  principal: unknown;
  include_content: boolean;
  include_versions: boolean;
  path: string | null;
  email: string;
  status: 'pending' | 'running' | 'ready' | 'failed' | 'expired';
  files_total: number | null;
  files_done: number;
  bytes: number;
  attempts: number;
  error: string | null;
  archive_key: string | null;
  archive_size: number | null;
  created_at: Date;
  completed_at: Date | null;
  expires_at: Date | null;
}

const columns = sql`id, tenant_id, creator, principal, include_content, include_versions, path, email, status, files_total, files_done, bytes,
  attempts, error, archive_key, archive_size, created_at, completed_at, expires_at`;

export type NewExport = Pick<ExportRow, 'id' | 'tenant_id' | 'creator' | 'principal' | 'include_content' | 'include_versions' | 'path' | 'email'>;

/**
 * A new pending export, unless the tenant already has `maxRunning` pending or running (then
 * no row). Serialised per tenant by an advisory lock (in the caller's transaction), so two requests cannot both pass the count.
 */
export async function insertExport(trx: Tx, row: NewExport, maxRunning: number): Promise<ExportRow | null> {
  await sql`select pg_advisory_xact_lock(hashtextextended(${`exports.tenant:${row.tenant_id}`}, 0))`.execute(trx);
  const result = await sql<ExportRow>`
    insert into exports.export (id, tenant_id, creator, principal, include_content, include_versions, path, email)
    select ${row.id}, ${row.tenant_id}, ${row.creator}, ${JSON.stringify(row.principal)}::jsonb, ${row.include_content}, ${row.include_versions}, ${row.path}, ${row.email}
    where (select count(*) from exports.export where tenant_id = ${row.tenant_id} and status in ('pending', 'running')) < ${maxRunning}
    returning ${columns}`.execute(trx);
  return result.rows[0] ?? null;
}

/** The export if this creator made it. */
export async function findExport(db: Db, tenantId: string, creator: string, id: string): Promise<ExportRow | null> {
  const result = await sql<ExportRow>`select ${columns} from exports.export where tenant_id = ${tenantId} and creator = ${creator} and id = ${id}`.execute(db);
  return result.rows[0] ?? null;
}

/** By id alone: for a download whose signed token names the export. */
export async function findExportById(db: Db, id: string): Promise<ExportRow | null> {
  const result = await sql<ExportRow>`select ${columns} from exports.export where id = ${id}`.execute(db);
  return result.rows[0] ?? null;
}

export async function listExports(db: Db, tenantId: string, creator: string, limit: number, before?: string): Promise<ExportRow[]> {
  const result = await sql<ExportRow>`
    select ${columns} from exports.export
    where tenant_id = ${tenantId} and creator = ${creator} and ${before === undefined ? sql`true` : sql`id < ${before}`}
    order by id desc limit ${limit}`.execute(db);
  return result.rows;
}

/** Claims the oldest pending export for a run (its attempt number goes up by one). */
export async function claimNext(db: Db): Promise<ExportRow | null> {
  const result = await sql<ExportRow>`
    update exports.export set status = 'running', attempts = attempts + 1, files_done = 0, bytes = 0, files_total = null, error = null
    where id = (select id from exports.export where status = 'pending' order by id for update skip locked limit 1)
    returning ${columns}`.execute(db);
  return result.rows[0] ?? null;
}

/**
 * Exports left `running` by a worker that is gone (killed, or deposed): back to pending while
 * they have tries left, failed with the reason otherwise. Run when this process starts leading
 * the work, so no other worker runs them any more.
 */
export async function requeueAbandoned(db: Db, maxAttempts: number): Promise<{ requeued: number; failed: number }> {
  const failed = await sql`
    update exports.export set status = 'failed', completed_at = now(), expires_at = now() + interval '1 day',
      error = ${`the export was interrupted ${maxAttempts} times (the server stopped while it ran); request it again`}
    where status = 'running' and attempts >= ${maxAttempts}`.execute(db);
  const requeued = await sql`update exports.export set status = 'pending' where status = 'running'`.execute(db);
  return { requeued: Number(requeued.numAffectedRows ?? 0), failed: Number(failed.numAffectedRows ?? 0) };
}

/** Progress of the run `attempt` (ignored once another run owns the row). */
export async function recordProgress(db: Db, id: string, attempt: number, progress: { files_total?: number; files_done: number; bytes: number }): Promise<void> {
  await sql`
    update exports.export set files_done = ${progress.files_done}, bytes = ${progress.bytes},
      files_total = ${progress.files_total === undefined ? sql`files_total` : sql`${progress.files_total}`}
    where id = ${id} and status = 'running' and attempts = ${attempt}`.execute(db);
}

/** Ready: only once the zip is durable under `archive_key`. False when this run no longer owns the row. */
export async function markReady(db: Db, id: string, attempt: number, archive: { key: string; size: number; expiresAt: Date; files: number; bytes: number }): Promise<boolean> {
  const result = await sql`
    update exports.export set status = 'ready', archive_key = ${archive.key}, archive_size = ${archive.size}, completed_at = now(),
      expires_at = ${archive.expiresAt}, files_total = ${archive.files}, files_done = ${archive.files}, bytes = ${archive.bytes}
    where id = ${id} and status = 'running' and attempts = ${attempt}`.execute(db);
  return Number(result.numAffectedRows ?? 0) > 0;
}

export async function markFailed(db: Db, id: string, attempt: number, error: string, expiresAt: Date): Promise<void> {
  await sql`
    update exports.export set status = 'failed', error = ${error}, completed_at = now(), expires_at = ${expiresAt}
    where id = ${id} and status = 'running' and attempts = ${attempt}`.execute(db);
}

/**
 * Expires the tenant's finished exports beyond the newest `keep` (their zips are then deleted by
 * the sweep); returns how many.
 */
export async function expireBeyondKept(db: Db, tenantId: string, keep: number): Promise<number> {
  const result = await sql`
    update exports.export set status = 'expired', expires_at = least(expires_at, now())
    where id in (
      select id from exports.export where tenant_id = ${tenantId} and status in ('ready', 'failed')
      order by id desc offset ${keep})`.execute(db);
  return Number(result.numAffectedRows ?? 0);
}

/** Finished exports past their expiry become `expired`; returns the zips they held (to delete). */
export async function expireDue(db: Db): Promise<string[]> {
  const result = await sql<{ archive_key: string | null }>`
    update exports.export set status = 'expired' where status in ('ready', 'failed') and expires_at <= now()
    returning archive_key`.execute(db);
  return result.rows.flatMap((row) => (row.archive_key ? [row.archive_key] : []));
}

/** Zips of expired exports not yet deleted (archive_key still set); cleared once deleted. */
export async function expiredArchives(db: Db, limit: number): Promise<Array<{ id: string; archive_key: string }>> {
  const result = await sql<{ id: string; archive_key: string }>`
    select id, archive_key from exports.export where status = 'expired' and archive_key is not null order by id limit ${limit}`.execute(db);
  return result.rows;
}

export async function clearArchive(db: Db, id: string): Promise<void> {
  await sql`update exports.export set archive_key = null where id = ${id}`.execute(db);
}
