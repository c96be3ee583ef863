import { sql } from 'kysely';
import { type Databases, type Db, type Tx, withTenant } from '../../../adapters/db/pg.ts';
import type { Environment } from '../../../core/principal.ts';
import type {
  BackupRepository,
  BlobTx,
  BlobUse,
  HistoryPosition,
  PolicyRow,
  RankedVersionRow,
  RetentionRule,
  TenantBackupTx,
  TenantStats,
  VersionRow,
} from '../domain/backup.repository.ts';

/**
 * SQL of the backup service (schema `backup`), and `PgBackupRepository`, the PostgreSQL driver
 * of the domain's `BackupRepository` port. Tenant-bound functions take a transaction from
 * `withTenant` and still name their tenant (isolation is enforced twice); the ones that take
 * a `Db` work across tenants and are for the worker's sweeps, verification and metrics.
 */

const columns = sql`tenant_id, file_id, version, event, event_id, owner_id, name, path, size, content_type, sha256, created_at, occurred_at, backed_up_at`;
/** Within one version, the content entry comes before the delete that closed it. */
const rank = sql`(case when event = 'File_delete' then 1 else 0 end)`;

/**
 * Serialises the backup writers of one blob: the worker holds it while it checks the bytes
 * are stored and records a version pointing at them; the sweep holds it while it checks
 * a blob is unreferenced and deletes it. So no version ever points at a swept blob.
 */
async function lockBlob(trx: Tx, sha256: string): Promise<void> {
  await lockBlobs(trx, [sha256]);
}

/** `lockBlob` for many blobs in one round trip, taken in sorted order (two callers cannot deadlock). */
async function lockBlobs(trx: Tx, sha256s: string[]): Promise<void> {
  if (sha256s.length === 0) return;
  await sql`select pg_advisory_xact_lock(hashtextextended('backup.blob:' || s, 0))
            from (select distinct s from unnest(${[...sha256s].sort()}::text[]) as s order by s) sorted`.execute(trx);
}

/**
 * Records many events' versions in one statement. Returns the event ids it recorded: one
 * already recorded (a redelivery) is left as it is and not returned.
 */
async function insertVersions(trx: Tx, rows: Array<Omit<VersionRow, 'backed_up_at'>>): Promise<Set<string>> {
  if (rows.length === 0) return new Set();
  const values = rows.map(
    (row) => sql`(${row.tenant_id}, ${row.file_id}, ${row.version}, ${row.event}, ${row.event_id}, ${row.owner_id}, ${row.name}, ${row.path},
                  ${row.size}, ${row.content_type}, ${row.sha256}, ${row.created_at}, ${row.occurred_at})`,
  );
  const result = await sql<{ event_id: string }>`
    insert into backup.version (tenant_id, file_id, version, event, event_id, owner_id, name, path, size, content_type, sha256, created_at, occurred_at)
    values ${sql.join(values)}
    on conflict do nothing
    returning event_id`.execute(trx);
  return new Set(result.rows.map((row) => row.event_id));
}

/** The owner recorded with the file's newest entry; undefined when the file has no history here. */
async function ownerOf(trx: Tx, tenantId: string, fileId: string): Promise<{ owner_id: string | null } | undefined> {
  const result = await sql<{ owner_id: string | null }>`
    select owner_id from backup.version where tenant_id = ${tenantId} and file_id = ${fileId}
    order by version desc, ${rank} desc limit 1`.execute(trx);
  return result.rows[0];
}

/** A file's history, oldest first, after the entry (version, rank) when given. */
async function listVersions(
  trx: Tx,
  tenantId: string,
  fileId: string,
  options: { after?: HistoryPosition; limit: number },
): Promise<RankedVersionRow[]> {
  const after = options.after ? sql`and (version, ${rank}) > (${options.after.version}, ${options.after.rank})` : sql``;
  const result = await sql<RankedVersionRow>`
    select ${columns}, ${rank} as rank from backup.version
    where tenant_id = ${tenantId} and file_id = ${fileId} ${after}
    order by version, ${rank} limit ${options.limit}`.execute(trx);
  return result.rows;
}

/** The content entry of one version (a delete entry repeats the bytes of the version it closed). */
async function findVersion(trx: Tx, tenantId: string, fileId: string, version: number): Promise<VersionRow | null> {
  const result = await sql<VersionRow>`
    select ${columns} from backup.version where tenant_id = ${tenantId} and file_id = ${fileId} and version = ${version}
    order by ${rank} limit 1`.execute(trx);
  return result.rows[0] ?? null;
}

/** The newest version that has content (not a delete entry): what a plain file restore brings back. */
async function latestContentVersion(trx: Tx, tenantId: string, fileId: string): Promise<VersionRow | null> {
  const result = await sql<VersionRow>`
    select ${columns} from backup.version where tenant_id = ${tenantId} and file_id = ${fileId} and event <> 'File_delete'
    order by version desc limit 1`.execute(trx);
  return result.rows[0] ?? null;
}

/** Each file's last entry committed at or before `asOf`: the tenant's state at that time. */
async function stateAsOf(trx: Tx, tenantId: string, asOf: Date): Promise<VersionRow[]> {
  const result = await sql<VersionRow>`
    select distinct on (file_id) ${columns} from backup.version
    where tenant_id = ${tenantId} and occurred_at <= ${asOf}
    order by file_id, occurred_at desc, version desc, ${rank} desc`.execute(trx);
  return result.rows;
}

async function tenantStats(trx: Tx, tenantId: string): Promise<TenantStats> {
  const result = await sql<{ versions: number; bytes: number | null; last_backup_at: Date | null }>`
    select (select count(*)::int from backup.version where tenant_id = ${tenantId}) as versions,
           (select coalesce(sum(size), 0)::bigint from (select distinct sha256, size from backup.version where tenant_id = ${tenantId}) b) as bytes,
           (select max(backed_up_at) from backup.version where tenant_id = ${tenantId}) as last_backup_at`.execute(trx);
  const row = result.rows[0];
  return { versions: row?.versions ?? 0, bytes: Number(row?.bytes ?? 0), last_backup_at: row?.last_backup_at ?? null };
}

async function getPolicy(trx: Tx, tenantId: string): Promise<PolicyRow | null> {
  const result = await sql<PolicyRow>`select tenant_id, keep_last, keep_days from backup.policy where tenant_id = ${tenantId}`.execute(trx);
  return result.rows[0] ?? null;
}

async function setPolicy(trx: Tx, policy: PolicyRow): Promise<void> {
  await sql`
    insert into backup.policy (tenant_id, keep_last, keep_days) values (${policy.tenant_id}, ${policy.keep_last}, ${policy.keep_days})
    on conflict (tenant_id) do update set keep_last = excluded.keep_last, keep_days = excluded.keep_days, updated_at = now()`.execute(trx);
}

/**
 * Removes the entries the tenant's policy no longer keeps. The newest version of every file
 * (the current one, or a deleted file's last) is never removed: both rules spare it.
 * Returns how many entries went.
 */
async function applyRetention(trx: Tx, policy: PolicyRow): Promise<number> {
  const newest = sql`(select max(w.version) from backup.version w where w.tenant_id = v.tenant_id and w.file_id = v.file_id)`;
  let rule: ReturnType<typeof sql> | undefined;
  if (policy.keep_last !== null) rule = sql`v.version <= ${newest} - ${policy.keep_last}`;
  else if (policy.keep_days !== null) rule = sql`v.created_at < now() - make_interval(days => ${policy.keep_days}) and v.version < ${newest}`;
  if (!rule) return 0;
  const result = await sql`delete from backup.version v where v.tenant_id = ${policy.tenant_id} and ${rule}`.execute(trx);
  return Number(result.numAffectedRows ?? 0);
}

/** Across tenants: every tenant with a retention other than "keep all". */
async function allPolicies(db: Db): Promise<PolicyRow[]> {
  const result = await sql<PolicyRow>`
    select tenant_id, keep_last, keep_days from backup.policy where keep_last is not null or keep_days is not null`.execute(db);
  return result.rows;
}

/** Across tenants: does any recorded version use this blob? */
async function blobInUse(db: Db | Tx, sha256: string): Promise<boolean> {
  const result = await sql`select 1 from backup.version where sha256 = ${sha256} limit 1`.execute(db);
  return result.rows.length > 0;
}

/** Across tenants: every stored blob with the versions that use it (for `bantu backup verify`). */
async function blobsWithVersions(db: Db): Promise<BlobUse[]> {
  const result = await sql<BlobUse>`
    select sha256, size,
           json_agg(json_build_object('tenant_id', tenant_id, 'file_id', file_id, 'version', version, 'event', event)
                    order by tenant_id, file_id, version) as versions
    from backup.version group by sha256, size order by sha256`.execute(db);
  return result.rows;
}

/** Across tenants: totals for the metrics. */
async function environmentStats(db: Db): Promise<{ versions: number; bytes: number }> {
  const result = await sql<{ versions: number; bytes: number | null }>`
    select (select count(*)::int from backup.version) as versions,
           (select coalesce(sum(size), 0)::bigint from (select distinct sha256, size from backup.version) b) as bytes`.execute(db);
  const row = result.rows[0];
  return { versions: row?.versions ?? 0, bytes: Number(row?.bytes ?? 0) };
}

/** The tenant-bound calls of one `withTenant` transaction: each names the tenant the transaction is bound to. */
function tenantTx(trx: Tx, tenantId: string): TenantBackupTx {
  return {
    lockBlobs: (sha256s) => lockBlobs(trx, sha256s),
    insertVersions: (rows) => insertVersions(trx, rows.map((row) => ({ tenant_id: tenantId, ...row }))),
    ownerOf: (fileId) => ownerOf(trx, tenantId, fileId),
    listVersions: (fileId, options) => listVersions(trx, tenantId, fileId, options),
    findVersion: (fileId, version) => findVersion(trx, tenantId, fileId, version),
    latestContentVersion: (fileId) => latestContentVersion(trx, tenantId, fileId),
    stateAsOf: (asOf) => stateAsOf(trx, tenantId, asOf),
    stats: () => tenantStats(trx, tenantId),
    getPolicy: () => getPolicy(trx, tenantId),
    setPolicy: (rule: RetentionRule) => setPolicy(trx, { tenant_id: tenantId, keep_last: rule.keep_last, keep_days: rule.keep_days }),
    applyRetention: (rule: RetentionRule) => applyRetention(trx, { tenant_id: tenantId, keep_last: rule.keep_last, keep_days: rule.keep_days }),
  };
}

/**
 * The backup's history in PostgreSQL: one `backup` schema per environment database. Tenant
 * transactions are `withTenant`'s (row-level security bound to the tenant, role `bantu_app`);
 * the calls across tenants run as the connecting role.
 */
export class PgBackupRepository implements BackupRepository {
  constructor(private readonly databases: Pick<Databases, 'environments'>) {}

  private db(environment: Environment): Db {
    return this.databases.environments[environment];
  }

  inTenant<T>(environment: Environment, tenantId: string, work: (tx: TenantBackupTx) => Promise<T>): Promise<T> {
    return withTenant(this.db(environment), tenantId, (trx) => work(tenantTx(trx, tenantId)));
  }

  acrossTenants<T>(environment: Environment, work: (tx: BlobTx) => Promise<T>): Promise<T> {
    return this.db(environment)
      .transaction()
      .execute((trx) => work({ lockBlob: (sha256) => lockBlob(trx, sha256), blobInUse: (sha256) => blobInUse(trx, sha256) }));
  }

  policies(environment: Environment): Promise<PolicyRow[]> {
    return allPolicies(this.db(environment));
  }

  blobInUse(environment: Environment, sha256: string): Promise<boolean> {
    return blobInUse(this.db(environment), sha256);
  }

  blobsWithVersions(environment: Environment): Promise<BlobUse[]> {
    return blobsWithVersions(this.db(environment));
  }

  environmentStats(environment: Environment): Promise<{ versions: number; bytes: number }> {
    return environmentStats(this.db(environment));
  }
}
