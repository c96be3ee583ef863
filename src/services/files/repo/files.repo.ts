import { type RawBuilder, sql } from 'kysely';
import { type Db, refuseIfNone, type Tx } from '../../../adapters/db/pg.ts';
import { lockSubject } from '../../../core/ports.ts';

/**
 * SQL of the files service. Every query names its tenant even though row-level security
 * already binds the transaction to it: isolation is enforced twice.
 * `owner` filters: a user sees their own files (owner = user id); null means every file.
 */
export interface FileRow {
  id: string;
  tenant_id: string;
  user_id: string | null;
  name: string;
  path: string;
  size: number;
  content_type: string;
  sha256: string;
  version: number;
  created_at: Date;
  updated_at: Date;
}

export interface IdempotencyRow {
  fingerprint: string;
  status: number;
  response: unknown;
}

const columns = sql`id, tenant_id, user_id, name, path, size, content_type, sha256, version, created_at, updated_at`;
const ownerFilter = (owner: string | null) => (owner === null ? sql`true` : sql`user_id = ${owner}`);

export function isUniqueViolation(error: unknown, constraint: string): boolean {
  const pgError = error as { code?: string; constraint?: string };
  return pgError?.code === '23505' && pgError.constraint === constraint;
}

/** The file, if `owner` (null: anyone) may see it; a statement for tenantRead. */
export function fileSelect(tenantId: string, id: string, owner: string | null) {
  return sql<FileRow>`
    select ${columns} from files.file
    where tenant_id = ${tenantId} and id = ${id} and deleted_at is null and ${ownerFilter(owner)}`;
}

/**
 * Locks a live file for a write. Writers call this FIRST in their transaction, so that for
 * one file the order of their transaction ids (xid) is their commit order, which is the order
 * the outbox delivers their events in.
 *
 * The bus's subject lock (an advisory lock, which assigns no xid) comes before the row lock:
 * a plain `select ... for update` is not enough, because a waiter gets its xid while still
 * waiting, so under contention xids come out of commit order (seen with 20 concurrent replaces).
 */
export async function lockFile(trx: Tx, tenantId: string, id: string): Promise<FileRow | null> {
  await lockSubject(trx, `files.file:${id}`);
  const result = await sql<FileRow>`
    select ${columns} from files.file
    where tenant_id = ${tenantId} and id = ${id} and deleted_at is null
    for update`.execute(trx);
  return result.rows[0] ?? null;
}

/** A row when the name is taken in the owner's folder; a statement for tenantRead. */
export function nameTakenSelect(tenantId: string, owner: string | null, path: string, name: string) {
  return sql<{ taken: 1 }>`
    select 1 as taken from files.file
    where tenant_id = ${tenantId} and coalesce(user_id, '') = ${owner ?? ''} and path = ${path} and name = ${name} and deleted_at is null`;
}

/** One page of files, newest first; a statement for tenantRead. */
export function filesListSelect(tenantId: string, options: { owner: string | null; path?: string; before?: string; limit: number }) {
  return sql<FileRow>`
    select ${columns} from files.file
    where tenant_id = ${tenantId} and deleted_at is null and ${ownerFilter(options.owner)}
      and ${options.path === undefined ? sql`true` : sql`path = ${options.path}`}
      and ${options.before === undefined ? sql`true` : sql`id < ${options.before}`}
    order by id desc limit ${options.limit}`;
}

/**
 * Every change of a file row makes a version: the writes below record it in the same
 * statement (one round trip, and no way to change a file without its version).
 */
const withVersion = (changed: RawBuilder<unknown>) => sql<FileRow>`
    with changed as (${changed} returning ${columns}),
    version as (
      insert into files.file_version (file_id, tenant_id, version, sha256, size, content_type, name, path)
      select id, tenant_id, version, sha256, size, content_type, name, path from changed
    )
    select ${columns} from changed`;

/**
 * A new file and its first version, as a statement. Its times are the writer's (as an event's
 * `occurred_at` is), so that the File object is known before the statement runs.
 */
export function insertFile(file: FileRow) {
  return withVersion(sql`
    insert into files.file (id, tenant_id, user_id, name, path, size, content_type, sha256, version, created_at, updated_at)
    values (${file.id}, ${file.tenant_id}, ${file.user_id}, ${file.name}, ${file.path}, ${file.size}, ${file.content_type}, ${file.sha256}, ${file.version},
            ${file.created_at}, ${file.updated_at})`);
}

/** The file's next version: its row changed, and the version recorded. */
export async function updateFile(
  trx: Tx,
  tenantId: string,
  id: string,
  change: Pick<FileRow, 'name' | 'path' | 'size' | 'content_type' | 'sha256' | 'version'>,
): Promise<FileRow> {
  const result = await withVersion(sql`
    update files.file set name = ${change.name}, path = ${change.path}, size = ${change.size},
      content_type = ${change.content_type}, sha256 = ${change.sha256}, version = ${change.version}, updated_at = now()
    where tenant_id = ${tenantId} and id = ${id}`).execute(trx);
  return result.rows[0] as FileRow;
}

export async function markDeleted(trx: Tx, tenantId: string, id: string): Promise<void> {
  await sql`update files.file set deleted_at = now() where tenant_id = ${tenantId} and id = ${id}`.execute(trx);
}

/**
 * Usage shards per tenant (see migration 0002): writes without a quota spread over them, so
 * writes of one tenant do not wait on one row; with a quota all go to shard 0.
 */
export const USAGE_SHARDS = 64;

/** The refusal (see refuseIfNone) of a write that would take the tenant over its quota. */
export const QUOTA_REFUSED = 'files.quota_exceeded';
/** The refusal of a claim on an Idempotency-Key that a live record holds. */
export const KEY_TAKEN = 'files.idempotency_key_taken';

/**
 * Adds to the tenant's usage, as a statement; with a quota, one that refuses its transaction
 * (QUOTA_REFUSED, nothing added) when growing by `delta.bytes` would exceed it. Without a
 * quota the delta goes to a random shard.
 */
export function addUsage(tenantId: string, delta: { files: number; bytes: number; versions: number }, quota: number | null): RawBuilder<unknown> {
  if (quota === null) {
    const shard = Math.floor(Math.random() * USAGE_SHARDS);
    return sql`
      insert into files.usage as u (tenant_id, shard, files, bytes, versions)
      values (${tenantId}, ${shard}, ${delta.files}, ${delta.bytes}, ${delta.versions})
      on conflict (tenant_id, shard) do update
        set files = u.files + excluded.files, bytes = u.bytes + excluded.bytes, versions = u.versions + excluded.versions`;
  }
  // Every write locks shard 0, so the other shards' sum cannot change under the check; the
  // insert (a tenant's first write) is checked against it too.
  const others = sql`(select coalesce(sum(o.bytes), 0) from files.usage o where o.tenant_id = ${tenantId} and o.shard <> 0)`;
  return refuseIfNone(
    sql`
    insert into files.usage as u (tenant_id, shard, files, bytes, versions)
    select ${tenantId}, 0, ${delta.files}::bigint, ${delta.bytes}::bigint, ${delta.versions}::bigint
    where ${delta.bytes}::bigint <= 0 or ${delta.bytes}::bigint + ${others} <= ${quota}::bigint
    on conflict (tenant_id, shard) do update
      set files = u.files + excluded.files, bytes = u.bytes + excluded.bytes, versions = u.versions + excluded.versions
      where excluded.bytes <= 0 or u.bytes + excluded.bytes + ${others} <= ${quota}::bigint
    returning 1`,
    QUOTA_REFUSED,
  );
}

/** The tenant's usage, the sum of its shards (a row of zeros before its first file); a statement for tenantRead. */
export function usageSelect(tenantId: string) {
  return sql<{ files: number; bytes: number; versions: number }>`
    select coalesce(sum(files), 0)::bigint as files, coalesce(sum(bytes), 0)::bigint as bytes, coalesce(sum(versions), 0)::bigint as versions
    from files.usage where tenant_id = ${tenantId}`;
}

/** The live answer recorded under the key; a statement for tenantRead. */
export function idempotencySelect(tenantId: string, principal: string, key: string) {
  return sql<IdempotencyRow>`
    select fingerprint, status, response from files.idempotency
    where tenant_id = ${tenantId} and principal = ${principal} and key = ${key} and expires_at > now()`;
}

/**
 * Claims a key for this transaction (an expired record of it is replaced), as a statement that
 * refuses its transaction (KEY_TAKEN) when a live record holds it. A concurrent claim of the
 * same key waits on the primary key until this transaction ends, then sees the committed
 * record (or claims the key after a rollback). The answer is recorded with the claim when it
 * is already known (status 0 and `{}`: completeIdempotency records it later in the transaction).
 */
export function claimIdempotency(claim: {
  tenant_id: string;
  principal: string;
  key: string;
  fingerprint: string;
  ttlSeconds: number;
  answer?: { status: number; response: unknown };
}) {
  const status = claim.answer?.status ?? 0;
  const response = JSON.stringify(claim.answer?.response ?? {});
  return refuseIfNone(
    sql`
    insert into files.idempotency as i (tenant_id, principal, key, fingerprint, status, response, expires_at)
    values (${claim.tenant_id}, ${claim.principal}, ${claim.key}, ${claim.fingerprint}, ${status}, ${response}::jsonb,
            now() + make_interval(secs => ${claim.ttlSeconds}))
    on conflict (tenant_id, principal, key) do update
      set fingerprint = excluded.fingerprint, status = excluded.status, response = excluded.response, created_at = now(), expires_at = excluded.expires_at
      where i.expires_at <= now()
    returning 1`,
    KEY_TAKEN,
  );
}

/** Stores the answer of a claimed key, in the transaction that claimed it. */
export function completeIdempotency(answer: { tenant_id: string; principal: string; key: string; status: number; response: unknown }) {
  return sql`
    update files.idempotency set status = ${answer.status}, response = ${JSON.stringify(answer.response)}::jsonb
    where tenant_id = ${answer.tenant_id} and principal = ${answer.principal} and key = ${answer.key}`;
}

/** Across tenants (the sweeper's connection is not tenant-bound). */
export async function deleteExpiredIdempotency(db: Db): Promise<number> {
  const result = await sql`delete from files.idempotency where expires_at <= now()`.execute(db);
  return Number(result.numAffectedRows ?? 0);
}

/** Across tenants: is this blob the bytes of any version? */
export async function blobInUse(db: Db, sha256: string): Promise<boolean> {
  const result = await sql`select 1 from files.file_version where sha256 = ${sha256} limit 1`.execute(db);
  return result.rows.length > 0;
}

/**
 * For a restore: the file whether live or deleted (a deleted file may come back), locked as
 * `lockFile` does, subject lock first, so its events keep their commit order.
 */
export async function lockFileForRestore(trx: Tx, tenantId: string, id: string): Promise<(FileRow & { deleted: boolean }) | null> {
  await lockSubject(trx, `files.file:${id}`);
  const result = await sql<FileRow & { deleted: boolean }>`
    select ${columns}, deleted_at is not null as deleted from files.file
    where tenant_id = ${tenantId} and id = ${id}
    for update`.execute(trx);
  return result.rows[0] ?? null;
}

/** Makes a version current again (and a deleted file live again) as the next version. */
export async function restoreFile(
  trx: Tx,
  tenantId: string,
  id: string,
  change: Pick<FileRow, 'name' | 'path' | 'size' | 'content_type' | 'sha256' | 'version'>,
): Promise<FileRow> {
  const result = await withVersion(sql`
    update files.file set name = ${change.name}, path = ${change.path}, size = ${change.size},
      content_type = ${change.content_type}, sha256 = ${change.sha256}, version = ${change.version},
      updated_at = now(), deleted_at = null
    where tenant_id = ${tenantId} and id = ${id}`).execute(trx);
  return result.rows[0] as FileRow;
}

/** `value` matched literally by LIKE (its `%`, `_` and `\` escaped). */
const likeLiteral = (value: string) => value.replace(/[\\%_]/g, (c) => `\\${c}`);

/**
 * One page of an export: visible live files in ascending id order after `after` (a keyset
 * cursor, one index range per page however far the export has gone). `pathPrefix`: that
 * folder (normalised) and everything under it. A statement for tenantRead.
 */
export function filesScanSelect(tenantId: string, options: { owner: string | null; pathPrefix?: string; after?: string; limit: number }) {
  const prefix = options.pathPrefix;
  const inFolder =
    prefix === undefined || prefix === '/' ? sql`true` : sql`(path = ${prefix} or path like ${`${likeLiteral(prefix)}/%`})`;
  return sql<FileRow>`
    select ${columns} from files.file
    where tenant_id = ${tenantId} and deleted_at is null and ${ownerFilter(options.owner)}
      and ${inFolder}
      and ${options.after === undefined ? sql`true` : sql`id > ${options.after}`}
    order by id asc limit ${options.limit}`;
}

export interface FileVersionRow {
  file_id: string;
  version: number;
  name: string;
  path: string;
  size: number;
  sha256: string;
  content_type: string;
  created_at: Date;
}

/**
 * Every recorded version of the live files among `ids` that `owner` (null: anyone) may see,
 * by file and oldest first; a statement for tenantRead.
 */
export function fileVersionsSelect(tenantId: string, ids: readonly string[], owner: string | null) {
  return sql<FileVersionRow>`
    select v.file_id, v.version, v.name, v.path, v.size, v.sha256, v.content_type, v.created_at
    from files.file_version v join files.file f on f.id = v.file_id
    where f.tenant_id = ${tenantId} and f.id = any(${ids}::text[]) and f.deleted_at is null and ${owner === null ? sql`true` : sql`f.user_id = ${owner}`}
    order by v.file_id, v.version asc`;
}

/**
 * Which of the (file, sha256) pairs a version of a live file `owner` (null: anyone) may see
 * records; a statement for tenantRead.
 */
export function versionBlobsSelect(tenantId: string, refs: ReadonlyArray<{ fileId: string; sha256: string }>, owner: string | null) {
  return sql<{ file_id: string; sha256: string }>`
    select distinct v.file_id, v.sha256 from files.file_version v join files.file f on f.id = v.file_id
    where f.tenant_id = ${tenantId} and f.deleted_at is null and ${owner === null ? sql`true` : sql`f.user_id = ${owner}`}
      and (v.file_id, v.sha256) in (select * from unnest(${refs.map((r) => r.fileId)}::text[], ${refs.map((r) => r.sha256)}::text[]))`;
}
