import { createHash } from 'node:crypto';
import type { Logger } from 'pino';
import { AppError, Errors, fail } from '../../../core/errors.ts';
import type { BusEvent, FileObject } from '../../../core/events.ts';
import { type BlobStore, type ByteRange, type EventBus, PoisonEventError, type StoredBlob } from '../../../core/ports.ts';
import { ENVIRONMENTS, type Environment, isTenantAdmin, type TenantPrincipal } from '../../../core/principal.ts';
import type { BackupUsagePort, FilesPort } from '../../../core/service-ports.ts';
import type { BackupRepository, HistoryPosition, PolicyRow, RetentionRule, TenantBackupTx, VersionEvent, VersionRow } from './backup.repository.ts';

/** How many blobs a batch copies at once: enough to overlap their fsyncs, few enough to keep memory flat. */
const COPY_CONCURRENCY = 8;

async function forEachLimit<T>(items: T[], limit: number, work: (item: T) => Promise<void>): Promise<void> {
  let next = 0;
  const lanes = Array.from({ length: Math.min(limit, items.length) }, async () => {
    while (next < items.length) await work(items[next++] as T);
  });
  await Promise.all(lanes);
}

/** The bus consumer name: its cursor and dead letters are kept under it. */
export const BACKUP_CONSUMER = 'backup';

/** The File object as file events carry it. */
export type FileSnapshot = FileObject;

/**
 * The in-process BackupUsagePort: the distinct bytes the backup holds for a tenant, read from
 * the backup's own history. It needs no BackupService, so the files service can be built first.
 */
export function usageOf(repository: BackupRepository): BackupUsagePort {
  return {
    heldBytes: async (principal) => (await repository.inTenant(principal.environment, principal.tenantId, (tx) => tx.stats())).bytes,
  };
}

/** Observers the composition root may hang metrics on. */
export interface BackupObserver {
  recorded?(environment: Environment, lagSeconds: number): void;
}

export interface BackupDeps {
  /** The history of every version, and the retention policies. */
  repository: BackupRepository;
  /** The files service's blob stores: where the bytes of each version are copied from. */
  sources: Record<Environment, BlobStore>;
  /** The backup store, one root per environment (BANTU_BACKUP_DIR). */
  store: Record<Environment, BlobStore>;
  bus: Pick<EventBus, 'status' | 'redeliverDeadLetters'>;
  /** Absent where nothing is restored (the worker alone, verify). */
  files?: FilesPort;
  logger: Logger;
  observer?: BackupObserver;
}

export interface VersionEntry {
  version: number;
  event: VersionEvent;
  name: string;
  path: string;
  size: number;
  sha256: string;
  content_type: string;
  created_at: string;
  backed_up_at: string;
}

export type RetentionPolicy = { keep: 'all' } | { keep_last: number } | { keep_days: number };

export interface BackupStatus {
  pending_events: number;
  last_backup_at: string | null;
  versions: number;
  bytes: number;
  dead_letters: number;
}

export interface DamagedBlob {
  environment: Environment;
  sha256: string;
  reason: string;
  versions: Array<{ tenant_id: string; file_id: string; version: number; event: string }>;
}

export interface AsOfPlan {
  remove: FileSnapshot[];
  restore: VersionRow[];
  unchanged: number;
  /** Live files that existed before `asOf` but have no backed-up history yet: left as they are. */
  notBackedUp: FileSnapshot[];
}

const FILE_EVENTS = new Set<string>(['File_create', 'File_update', 'File_delete']);
const SHA256 = /^[0-9a-f]{64}$/;

function toEntry(row: VersionRow): VersionEntry {
  return {
    version: row.version,
    event: row.event,
    name: row.name,
    path: row.path,
    size: row.size,
    sha256: row.sha256,
    content_type: row.content_type,
    created_at: row.created_at.toISOString(),
    backed_up_at: row.backed_up_at.toISOString(),
  };
}

/** An event's File object, checked: a malformed one is poison (it ends as a dead letter) instead of recording garbage. */
export function snapshotOf(event: BusEvent): FileSnapshot {
  const file = (event.data as { file?: Partial<FileSnapshot> }).file;
  if (
    !file ||
    typeof file.id !== 'string' ||
    typeof file.name !== 'string' ||
    typeof file.path !== 'string' ||
    typeof file.size !== 'number' ||
    typeof file.content_type !== 'string' ||
    typeof file.sha256 !== 'string' ||
    !SHA256.test(file.sha256) ||
    typeof file.version !== 'number' ||
    typeof file.updated_at !== 'string'
  ) {
    throw new PoisonEventError(`event ${event.event_id} (${event.type}) carries no valid File object`);
  }
  return file as FileSnapshot;
}

const notFound = (id: string) => new AppError(Errors.notFound, `No file ${id}`);

/**
 * The backup service: copies every version's bytes into its own content-addressed store,
 * records each File_* event as an entry of the file's history, and serves that history
 * (list, download, restore through the files service).
 *
 * Record order for one event: the bytes are durable in the backup store (and their SHA-256
 * checked) before the history row commits, and the handler returns (acknowledges) only
 * after that commit. A crash anywhere leaves at most an unreferenced blob; the redelivered
 * event then finds the blob and records the row. A second delivery changes nothing.
 */
export class BackupService {
  constructor(private readonly deps: BackupDeps) {}

  private inTenant<T>(principal: TenantPrincipal, work: (tx: TenantBackupTx) => Promise<T>): Promise<T> {
    return this.deps.repository.inTenant(principal.environment, principal.tenantId, work);
  }

  /**
   * The bus handler for one event. Throws a PoisonEventError when the event itself is bad
   * (no valid File object, its bytes missing from the files store or not the bytes it names):
   * retried a few times, then set aside. Anything else (the backup store or the database
   * failing) is thrown as it is, and the bus retries it until it passes.
   */
  async record(event: BusEvent): Promise<void> {
    await this.recordBatch([event]);
  }

  /**
   * The bus handler for the events of one read (one environment, delivery order): copies
   * the distinct blobs a few at a time, then records the versions in one transaction per
   * tenant, so a backlog shares its commits. Any failure fails the whole batch, which the
   * bus then retries event by event.
   */
  async recordBatch(events: BusEvent[]): Promise<void> {
    const items = events.filter((event) => FILE_EVENTS.has(event.type)).map((event) => ({ event, file: snapshotOf(event) }));
    const first = items[0];
    if (!first) return;
    const environment = first.event.environment;
    const store = this.deps.store[environment];
    const blobs = new Map(items.map(({ file }) => [file.sha256, file]));
    await forEachLimit([...blobs.values()], COPY_CONCURRENCY, async (file) => {
      if (!(await store.stat(file.sha256))) await this.copy(environment, file);
    });

    const byTenant = new Map<string, typeof items>();
    for (const item of items) byTenant.set(item.event.tenant_id, [...(byTenant.get(item.event.tenant_id) ?? []), item]);
    for (const [tenantId, tenantItems] of byTenant) {
      const recorded = await this.deps.repository.inTenant(environment, tenantId, async (tx) => {
        // The sweep deletes unreferenced blobs under the same locks (taken in one order, so
        // two batches cannot deadlock): make sure ours survived until we reference them.
        const shas = [...new Set(tenantItems.map(({ file }) => file.sha256))];
        await tx.lockBlobs(shas);
        const present = await Promise.all(shas.map((sha256) => store.stat(sha256)));
        const swept = shas.find((_, i) => !present[i]);
        if (swept) throw new Error(`backup blob ${swept} was swept before its version was recorded; retrying`);
        const recordedIds = await tx.insertVersions(
          tenantItems.map(({ event, file }) => ({
            file_id: file.id,
            version: file.version,
            event: event.type as VersionEvent,
            event_id: event.event_id,
            owner_id: file.owner_id ?? null,
            name: file.name,
            path: file.path,
            size: file.size,
            content_type: file.content_type,
            sha256: file.sha256,
            created_at: new Date(event.type === 'File_delete' ? event.occurred_at : file.updated_at),
            occurred_at: new Date(event.occurred_at),
          })),
        );
        return tenantItems.filter(({ event }) => recordedIds.has(event.event_id)).map(({ event }) => event);
      });
      for (const event of recorded) this.deps.observer?.recorded?.(environment, Math.max(0, (Date.now() - Date.parse(event.occurred_at)) / 1000));
    }
  }

  /**
   * Copies one version's bytes from the files store, checking they are the bytes the event
   * names: inside the storage service when the backup store can (S3 to S3 on one service,
   * where the size is checked and the bytes are not read), streamed through here otherwise.
   */
  private async copy(environment: Environment, file: FileSnapshot): Promise<void> {
    const from = this.deps.sources[environment];
    const to = this.deps.store[environment];
    const missing = (error: unknown) =>
      (error as NodeJS.ErrnoException).code === 'ENOENT'
        ? new PoisonEventError(`the files store has no blob ${file.sha256} (file ${file.id} version ${file.version})`, { cause: error })
        : error; // the files store failing to read (EIO...): not the event's fault
    let stored: StoredBlob | null;
    try {
      stored = (await to.copyFrom?.(from, file.sha256)) ?? null;
    } catch (error) {
      throw missing(error);
    }
    if (stored && stored.size !== file.size) {
      // Under the key the event names, but not its bytes: nothing may reference it.
      await to.delete(file.sha256);
      throw new PoisonEventError(`size mismatch for file ${file.id} version ${file.version}: expected ${file.size} bytes, the files store holds ${stored.size}`);
    }
    if (stored) return;
    let source: AsyncIterable<Uint8Array>;
    try {
      source = await from.get(file.sha256);
    } catch (error) {
      throw missing(error);
    }
    stored = await to.put(source);
    if (stored.sha256 !== file.sha256 || stored.size !== file.size) {
      // Stored under its real hash, which nothing references: the sweep removes it.
      throw new PoisonEventError(`checksum mismatch for file ${file.id} version ${file.version}: expected ${file.sha256} (${file.size} bytes), read ${stored.sha256} (${stored.size} bytes)`);
    }
  }

  /** A user who is not an admin sees the history of their own files only; others' are 404. */
  private async assertVisible(tx: TenantBackupTx, principal: TenantPrincipal, fileId: string): Promise<void> {
    const owner = await tx.ownerOf(fileId);
    if (!owner) throw notFound(fileId);
    if (principal.kind === 'user' && !isTenantAdmin(principal) && owner.owner_id !== principal.userId) throw notFound(fileId);
  }

  async listVersions(principal: TenantPrincipal, fileId: string, query: { limit: number; cursor?: string }) {
    const after = decodeVersionCursor(query.cursor);
    const rows = await this.inTenant(principal, async (tx) => {
      await this.assertVisible(tx, principal, fileId);
      return tx.listVersions(fileId, { after, limit: query.limit + 1 });
    });
    const page = rows.slice(0, query.limit);
    const last = page[page.length - 1];
    return {
      data: page.map(toEntry),
      next_cursor: rows.length > query.limit && last ? Buffer.from(`${last.version}.${last.rank}`).toString('base64url') : null,
    };
  }

  async findVersion(principal: TenantPrincipal, fileId: string, version: number): Promise<VersionEntry> {
    const row = await this.inTenant(principal, async (tx) => {
      await this.assertVisible(tx, principal, fileId);
      return tx.findVersion(fileId, version);
    });
    if (!row) fail(Errors.notFound, `File ${fileId} has no version ${version} in the backups`);
    return toEntry(row);
  }

  /** A stream of one backed-up version's bytes (or a range of them), from the backup store. */
  async openVersion(principal: TenantPrincipal, entry: VersionEntry, range?: ByteRange) {
    return this.deps.store[principal.environment].get(entry.sha256, range);
  }

  /**
   * Makes a backed-up version the file's current content again, as a NEW version made by the
   * files service (with its own File_* event, which the backup records in turn). A deleted
   * file comes back under the same id.
   */
  async restore(principal: TenantPrincipal, fileId: string, version: number) {
    const files = this.deps.files;
    if (!files) throw new Error('restore needs the files service');
    const entry = await this.findVersion(principal, fileId, version);
    const store = this.deps.store[principal.environment];
    return files.restoreVersion(principal, fileId, entry, () => store.get(entry.sha256));
  }

  /** The newest version of a file that had content (the one a restore without --version brings back). */
  async latestVersion(principal: TenantPrincipal, fileId: string): Promise<number> {
    const row = await this.inTenant(principal, async (tx) => {
      await this.assertVisible(tx, principal, fileId);
      return tx.latestContentVersion(fileId);
    });
    if (!row) fail(Errors.notFound, `File ${fileId} has no backed-up content`);
    return row.version;
  }

  async status(principal: TenantPrincipal): Promise<BackupStatus> {
    if (!isTenantAdmin(principal)) fail(Errors.forbidden, 'Backup status is for account keys and admin users');
    const [stats, consumers] = await Promise.all([
      this.inTenant(principal, (tx) => tx.stats()),
      this.deps.bus.status(BACKUP_CONSUMER, principal.tenantId),
    ]);
    const consumer = consumers.find((c) => c.environment === principal.environment);
    return {
      pending_events: consumer?.pending ?? 0,
      last_backup_at: stats.last_backup_at?.toISOString() ?? null,
      versions: stats.versions,
      bytes: stats.bytes,
      dead_letters: consumer?.deadLetters ?? 0,
    };
  }

  /**
   * Records every dead-lettered file event again (`bantu backup retry-dead-letters`), for once
   * its cause is fixed (the blob put back, the files store remounted). Those that pass are
   * backed up and no longer dead letters; the others stay, with their new error.
   */
  async retryDeadLetters() {
    return this.deps.bus.redeliverDeadLetters(BACKUP_CONSUMER, (event) => this.record(event));
  }

  async getPolicy(principal: TenantPrincipal): Promise<RetentionPolicy> {
    if (!isTenantAdmin(principal)) fail(Errors.forbidden, 'The retention policy is for account keys and admin users');
    const row = await this.inTenant(principal, (tx) => tx.getPolicy());
    return policyOf(row);
  }

  async setPolicy(principal: TenantPrincipal, policy: RetentionPolicy): Promise<RetentionPolicy> {
    if (principal.kind !== 'account_key') fail(Errors.forbidden, 'Only an account key may set the retention policy');
    const rule: RetentionRule = {
      keep_last: 'keep_last' in policy ? policy.keep_last : null,
      keep_days: 'keep_days' in policy ? policy.keep_days : null,
    };
    await this.inTenant(principal, (tx) => tx.setPolicy(rule));
    return policyOf(rule);
  }

  /**
   * Enforces every tenant's retention, then deletes backup blobs no entry uses any more
   * (including bytes a failed copy left behind). Never touches a file's newest version.
   */
  async sweep(): Promise<{ entries: number; blobs: number }> {
    let entries = 0;
    let blobs = 0;
    const { repository } = this.deps;
    for (const environment of ENVIRONMENTS) {
      for (const policy of await repository.policies(environment)) {
        entries += await repository.inTenant(environment, policy.tenant_id, (tx) => tx.applyRetention(policy));
      }
      const store = this.deps.store[environment];
      for await (const blob of store.list()) {
        if (await repository.blobInUse(environment, blob.key)) continue;
        const removed = await repository.acrossTenants(environment, async (tx) => {
          await tx.lockBlob(blob.key);
          if (await tx.blobInUse(blob.key)) return false;
          await store.delete(blob.key);
          return true;
        });
        if (removed) blobs++;
      }
    }
    if (entries || blobs) this.deps.logger.info({ entries, blobs }, 'backup sweep removed expired versions and unreferenced blobs');
    return { entries, blobs };
  }

  /**
   * Re-hashes every stored blob against the SHA-256 and size its versions recorded.
   * Returns the damaged ones (missing, truncated, altered), each with every version it holds.
   */
  async verify(onBlob?: (done: number, total: number) => void): Promise<{ blobs: number; versions: number; damaged: DamagedBlob[] }> {
    const damaged: DamagedBlob[] = [];
    let blobs = 0;
    let versions = 0;
    for (const environment of ENVIRONMENTS) {
      const rows = await this.deps.repository.blobsWithVersions(environment);
      let done = 0;
      for (const row of rows) {
        blobs++;
        versions += row.versions.length;
        const reason = await this.checkBlob(environment, row.sha256, row.size);
        if (reason) damaged.push({ environment, sha256: row.sha256, reason, versions: row.versions });
        onBlob?.(++done, rows.length);
      }
    }
    return { blobs, versions, damaged };
  }

  private async checkBlob(environment: Environment, sha256: string, size: number): Promise<string | null> {
    const hash = createHash('sha256');
    let read = 0;
    try {
      for await (const chunk of await this.deps.store[environment].get(sha256)) {
        read += chunk.byteLength;
        hash.update(chunk);
      }
    } catch (error) {
      return (error as NodeJS.ErrnoException).code === 'ENOENT' ? 'missing' : `unreadable: ${(error as Error).message}`;
    }
    const actual = hash.digest('hex');
    if (actual !== sha256) return `checksum mismatch (read ${read} bytes hashing to ${actual})`;
    if (read !== size) return `size mismatch (read ${read} bytes, expected ${size})`;
    return null;
  }

  /**
   * What restoring the tenant to its state at `asOf` takes: files live now that did not exist
   * then (or were deleted by then) are removed; files whose content, name or folder differ, or
   * that are deleted now, get the version they had then. Live files come from the files service
   * (its truth); the past comes from the backup history.
   */
  async planAsOf(principal: TenantPrincipal, asOf: Date): Promise<AsOfPlan> {
    const files = this.deps.files;
    if (!files) throw new Error('restore needs the files service');
    if (!isTenantAdmin(principal)) fail(Errors.forbidden, 'A tenant restore needs an account key or an admin');
    const then = new Map((await this.inTenant(principal, (tx) => tx.stateAsOf(asOf))).map((row) => [row.file_id, row]));
    const live = new Map<string, FileSnapshot>();
    let cursor: string | undefined;
    do {
      const page = await files.list(principal, { limit: 200, cursor });
      for (const file of page.data) live.set(file.id, file);
      cursor = page.next_cursor ?? undefined;
    } while (cursor);

    const plan: AsOfPlan = { remove: [], restore: [], unchanged: 0, notBackedUp: [] };
    for (const file of live.values()) {
      const past = then.get(file.id);
      if (!past) {
        if (Date.parse(file.created_at) > asOf.getTime()) plan.remove.push(file);
        else plan.notBackedUp.push(file);
      } else if (past.event === 'File_delete') {
        plan.remove.push(file);
      } else if (past.sha256 !== file.sha256 || past.name !== file.name || past.path !== file.path || past.content_type !== file.content_type) {
        plan.restore.push(past);
      } else {
        plan.unchanged++;
      }
    }
    for (const past of then.values()) {
      if (!live.has(past.file_id) && past.event !== 'File_delete') plan.restore.push(past);
    }
    return plan;
  }

  /** Carries out a plan: removals first, so that restored names are free again. */
  async applyAsOf(principal: TenantPrincipal, plan: AsOfPlan, onStep?: (done: number, total: number, what: string) => void): Promise<void> {
    const files = this.deps.files;
    if (!files) throw new Error('restore needs the files service');
    const total = plan.remove.length + plan.restore.length;
    let done = 0;
    for (const file of plan.remove) {
      await files.remove(principal, file.id).catch((error) => {
        if (!(error instanceof AppError && error.code === 'not_found')) throw error;
      });
      onStep?.(++done, total, `removed ${file.id} (${file.name})`);
    }
    for (const past of plan.restore) {
      await this.restore(principal, past.file_id, past.version);
      onStep?.(++done, total, `restored ${past.file_id} (${past.name}) to version ${past.version}`);
    }
  }
}

function policyOf(row: Pick<PolicyRow, 'keep_last' | 'keep_days'> | null): RetentionPolicy {
  if (row?.keep_last != null) return { keep_last: row.keep_last };
  if (row?.keep_days != null) return { keep_days: row.keep_days };
  return { keep: 'all' };
}

function decodeVersionCursor(cursor: string | undefined): HistoryPosition | undefined {
  if (cursor === undefined) return undefined;
  const match = /^(\d{1,9})\.([01])$/.exec(Buffer.from(cursor, 'base64url').toString('utf8'));
  if (!match) {
    throw new AppError(Errors.validationFailed, 'The cursor is not one this server gave', { errors: [{ field: 'cursor', message: 'is invalid' }] });
  }
  return { version: Number(match[1]), rank: Number(match[2]) };
}
