import type { Environment } from '../../../core/principal.ts';

/**
 * The backup domain's store of record: the history of every file version and each tenant's
 * retention, one per environment. The domain depends on this port only; the PostgreSQL driver
 * is `PgBackupRepository` (repo/backup.repo.ts, schema `backup`), the in-memory one is the
 * unit tests' (domain/fakes.ts). Both pass `backupRepositoryContract`.
 */

export type VersionEvent = 'File_create' | 'File_update' | 'File_delete';

/** One recorded File_* event: an entry of the file's history. */
export interface VersionRow {
  tenant_id: string;
  file_id: string;
  version: number;
  event: VersionEvent;
  event_id: string;
  owner_id: string | null;
  name: string;
  path: string;
  size: number;
  content_type: string;
  sha256: string;
  /** When the version was made (the file's updated_at; a delete's event time). */
  created_at: Date;
  /** When the change committed: what a point-in-time restore compares with. */
  occurred_at: Date;
  /** Set by the store when the entry is recorded. */
  backed_up_at: Date;
}

/** An entry to record, in the transaction's tenant. */
export type NewVersion = Omit<VersionRow, 'tenant_id' | 'backed_up_at'>;

/** A history entry with its rank within its version: 0 for the content entry, 1 for the delete that closed it. */
export type RankedVersionRow = VersionRow & { rank: number };

/** Where a page of history starts after (exclusive): the last entry of the page before. */
export interface HistoryPosition {
  version: number;
  rank: number;
}

/** A tenant's retention: at most one of the two is set; neither means keep everything. */
export interface RetentionRule {
  keep_last: number | null;
  keep_days: number | null;
}

export interface PolicyRow extends RetentionRule {
  tenant_id: string;
}

export interface TenantStats {
  versions: number;
  /** Distinct bytes: each (sha256, size) counted once, however many entries share it. */
  bytes: number;
  last_backup_at: Date | null;
}

/** A stored blob and every entry that uses it. */
export interface BlobUse {
  sha256: string;
  size: number;
  /** Ordered by tenant, file, version. */
  versions: Array<{ tenant_id: string; file_id: string; version: number; event: string }>;
}

/**
 * One transaction bound to one tenant: every call reads and writes that tenant's entries only
 * (PostgreSQL: row-level security bound to the transaction, and every query filtered by tenant).
 * The calls of one `inTenant` commit together, or none does.
 */
export interface TenantBackupTx {
  /**
   * Serialises the backup writers of these blobs until the transaction ends (in sorted order,
   * so two callers cannot deadlock): the worker holds them while it checks the bytes are stored
   * and records versions pointing at them; the sweep holds one while it checks a blob is
   * unreferenced and deletes it. So no version ever points at a swept blob.
   */
  lockBlobs(sha256s: string[]): Promise<void>;
  /**
   * Records the entries, in one statement. Returns the event ids it recorded: an entry whose
   * event id, or whose (file, version, event), is already recorded (a redelivery) is left as
   * it is and not returned. Event ids are unique across tenants.
   */
  insertVersions(rows: NewVersion[]): Promise<Set<string>>;
  /** The owner recorded with the file's newest entry; undefined when the file has no history here. */
  ownerOf(fileId: string): Promise<{ owner_id: string | null } | undefined>;
  /** A file's history ordered by (version, rank), after `after` when given, at most `limit` entries. */
  listVersions(fileId: string, options: { after?: HistoryPosition; limit: number }): Promise<RankedVersionRow[]>;
  /** The content entry of one version (a delete entry repeats the bytes of the version it closed); null when none. */
  findVersion(fileId: string, version: number): Promise<VersionRow | null>;
  /** The newest entry that has content (not a delete): what a plain file restore brings back. */
  latestContentVersion(fileId: string): Promise<VersionRow | null>;
  /** Each file's last entry that occurred at or before `asOf` (the tenant's state then), by file id. */
  stateAsOf(asOf: Date): Promise<VersionRow[]>;
  stats(): Promise<TenantStats>;
  getPolicy(): Promise<PolicyRow | null>;
  setPolicy(rule: RetentionRule): Promise<void>;
  /**
   * Removes the entries the rule no longer keeps: `keep_last` N keeps each file's N newest
   * versions, `keep_days` D the entries made in the last D days (by the store's clock). The
   * newest version of every file (the current one, or a deleted file's last) is never
   * removed. Returns how many entries went.
   */
  applyRetention(rule: RetentionRule): Promise<number>;
}

/** One transaction across tenants, for the sweep's deletion of a blob. */
export interface BlobTx {
  /** As `TenantBackupTx.lockBlobs`, for one blob. */
  lockBlob(sha256: string): Promise<void>;
  /** Does any tenant's entry use this blob? */
  blobInUse(sha256: string): Promise<boolean>;
}

export interface BackupRepository {
  /** Runs `work` in one transaction of `environment`'s store bound to `tenantId`; it commits when `work` resolves. */
  inTenant<T>(environment: Environment, tenantId: string, work: (tx: TenantBackupTx) => Promise<T>): Promise<T>;
  /** Runs `work` in one transaction of `environment`'s store that spans tenants. */
  acrossTenants<T>(environment: Environment, work: (tx: BlobTx) => Promise<T>): Promise<T>;

  // Across tenants, outside any transaction: the sweeps, verification and metrics.
  /** Every tenant whose retention is not "keep all". */
  policies(environment: Environment): Promise<PolicyRow[]>;
  blobInUse(environment: Environment, sha256: string): Promise<boolean>;
  /** Every blob some entry uses, ordered by sha256. */
  blobsWithVersions(environment: Environment): Promise<BlobUse[]>;
  /** Totals of every tenant. */
  environmentStats(environment: Environment): Promise<{ versions: number; bytes: number }>;
}
