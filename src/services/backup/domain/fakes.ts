import { Readable } from 'node:stream';
import { MemoryBlobStore } from '../../../adapters/blob/memory.ts';
import { AppError, Errors } from '../../../core/errors.ts';
import type { BusEvent, FileObject } from '../../../core/events.ts';
import { type Environment, isTenantAdmin, type TenantPrincipal } from '../../../core/principal.ts';
import type { FilesPort, RestorableVersion } from '../../../core/service-ports.ts';
import type {
  BackupRepository,
  BlobTx,
  BlobUse,
  NewVersion,
  PolicyRow,
  RankedVersionRow,
  RetentionRule,
  TenantBackupTx,
  TenantStats,
  VersionRow,
} from './backup.repository.ts';

/**
 * In-memory fakes of the ports the backup domain uses, for its unit tests: the repository
 * (which passes the same contract as the PostgreSQL one), the files service, and a clock
 * both share. Test code only: nothing in the application builds them.
 */

/** A clock a test moves by hand. */
export class FakeClock {
  constructor(public ms = Date.parse('2026-01-01T00:00:00.000Z')) {}
  now = (): Date => new Date(this.ms);
  advance(ms: number): void {
    this.ms += ms;
  }
}

export const DAY_MS = 24 * 60 * 60 * 1000;

const rankOf = (row: Pick<VersionRow, 'event'>) => (row.event === 'File_delete' ? 1 : 0);
/** Orders entries as the SQL does: by (version, rank). */
const byVersionAndRank = (a: VersionRow, b: VersionRow) => a.version - b.version || rankOf(a) - rankOf(b);
const compare = (a: string, b: string) => (a < b ? -1 : a > b ? 1 : 0);

interface EnvironmentState {
  versions: VersionRow[];
  policies: Map<string, PolicyRow>;
}

function checkRule(rule: RetentionRule): void {
  // The table's check constraints.
  if (rule.keep_last !== null && rule.keep_last < 1) throw new Error('keep_last must be at least 1 (check constraint)');
  if (rule.keep_days !== null && rule.keep_days < 1) throw new Error('keep_days must be at least 1 (check constraint)');
  if (rule.keep_last !== null && rule.keep_days !== null) throw new Error('keep_last and keep_days exclude each other (check constraint)');
}

function distinctBytes(rows: VersionRow[]): number {
  const seen = new Map<string, number>();
  for (const row of rows) seen.set(`${row.sha256} ${row.size}`, row.size);
  return [...seen.values()].reduce((sum, size) => sum + size, 0);
}

/**
 * The backup's history in memory, one state per environment. Transactions run one at a time
 * (so the blob locks always hold), and one whose work throws leaves nothing behind. A tenant
 * transaction sees and writes its tenant's entries only, as row-level security makes the
 * PostgreSQL one; event ids are unique across tenants, as the unique index makes them there.
 * `journal` lists the writes and locks of every transaction, in order, for tests that check
 * what the domain did inside one. (A transaction opened inside another would wait forever,
 * as it could on a pool of one connection: the domain never does it.)
 */
export class MemoryBackupRepository implements BackupRepository {
  private readonly state: Record<Environment, EnvironmentState> = {
    live: { versions: [], policies: new Map() },
    test: { versions: [], policies: new Map() },
  };
  private queue: Promise<unknown> = Promise.resolve();
  readonly journal: string[] = [];
  /** The store's clock: recorded entries' backed_up_at, and the "now" of `keep_days`. */
  readonly now: () => Date;

  constructor(options: { now?: () => Date } = {}) {
    this.now = options.now ?? (() => new Date());
  }

  /** Every entry of an environment, for tests' assertions (copies). */
  entries(environment: Environment): VersionRow[] {
    return this.state[environment].versions.map((row) => ({ ...row }));
  }

  private transaction<Tx, T>(environment: Environment, open: (state: EnvironmentState, alive: () => void) => Tx, work: (tx: Tx) => Promise<T>): Promise<T> {
    const run = this.queue.then(async () => {
      const state = this.state[environment];
      const before = { versions: [...state.versions], policies: new Map(state.policies) };
      let ended = false;
      const alive = () => {
        if (ended) throw new Error('the transaction has ended');
      };
      try {
        return await work(open(state, alive));
      } catch (error) {
        state.versions = before.versions;
        state.policies = before.policies;
        throw error;
      } finally {
        ended = true;
      }
    });
    this.queue = run.catch(() => undefined);
    return run;
  }

  inTenant<T>(environment: Environment, tenantId: string, work: (tx: TenantBackupTx) => Promise<T>): Promise<T> {
    return this.transaction(environment, (state, alive) => this.tenantTx(state, tenantId, alive), work);
  }

  acrossTenants<T>(environment: Environment, work: (tx: BlobTx) => Promise<T>): Promise<T> {
    return this.transaction(
      environment,
      (state, alive): BlobTx => ({
        lockBlob: async (sha256) => {
          alive();
          this.journal.push(`lockBlob ${sha256}`);
        },
        blobInUse: async (sha256) => {
          alive();
          return state.versions.some((row) => row.sha256 === sha256);
        },
      }),
      work,
    );
  }

  private tenantTx(state: EnvironmentState, tenantId: string, alive: () => void): TenantBackupTx {
    const mine = () => state.versions.filter((row) => row.tenant_id === tenantId);
    const ofFile = (fileId: string) => mine().filter((row) => row.file_id === fileId);
    const copy = (row: VersionRow | undefined) => (row ? { ...row } : null);
    return {
      lockBlobs: async (sha256s) => {
        alive();
        if (sha256s.length > 0) this.journal.push(`lockBlobs ${tenantId} ${[...new Set(sha256s)].sort().join(',')}`);
      },
      insertVersions: async (rows: NewVersion[]) => {
        alive();
        const recorded = new Set<string>();
        for (const row of rows) {
          const taken = state.versions.some(
            (other) =>
              other.event_id === row.event_id ||
              (other.tenant_id === tenantId && other.file_id === row.file_id && other.version === row.version && other.event === row.event),
          );
          if (taken) continue;
          state.versions.push({ ...row, tenant_id: tenantId, backed_up_at: this.now() });
          recorded.add(row.event_id);
        }
        this.journal.push(`insertVersions ${tenantId} ${rows.length} -> ${recorded.size}`);
        return recorded;
      },
      ownerOf: async (fileId) => {
        alive();
        const newest = ofFile(fileId).sort(byVersionAndRank).at(-1);
        return newest ? { owner_id: newest.owner_id } : undefined;
      },
      listVersions: async (fileId, options) => {
        alive();
        const { after } = options;
        return ofFile(fileId)
          .sort(byVersionAndRank)
          .map((row): RankedVersionRow => ({ ...row, rank: rankOf(row) }))
          .filter((row) => !after || row.version > after.version || (row.version === after.version && row.rank > after.rank))
          .slice(0, options.limit);
      },
      findVersion: async (fileId, version) => {
        alive();
        return copy(
          ofFile(fileId)
            .filter((row) => row.version === version)
            .sort(byVersionAndRank)[0],
        );
      },
      latestContentVersion: async (fileId) => {
        alive();
        return copy(
          ofFile(fileId)
            .filter((row) => row.event !== 'File_delete')
            .sort(byVersionAndRank)
            .at(-1),
        );
      },
      stateAsOf: async (asOf) => {
        alive();
        const last = new Map<string, VersionRow>();
        const later = (a: VersionRow, b: VersionRow) => a.occurred_at.getTime() - b.occurred_at.getTime() || byVersionAndRank(a, b);
        for (const row of mine()) {
          if (row.occurred_at.getTime() > asOf.getTime()) continue;
          const seen = last.get(row.file_id);
          if (!seen || later(row, seen) > 0) last.set(row.file_id, row);
        }
        return [...last.values()].sort((a, b) => compare(a.file_id, b.file_id)).map((row) => ({ ...row }));
      },
      stats: async (): Promise<TenantStats> => {
        alive();
        const rows = mine();
        const last = rows.reduce<Date | null>((max, row) => (max === null || row.backed_up_at > max ? row.backed_up_at : max), null);
        return { versions: rows.length, bytes: distinctBytes(rows), last_backup_at: last };
      },
      getPolicy: async () => {
        alive();
        const policy = state.policies.get(tenantId);
        return policy ? { ...policy } : null;
      },
      setPolicy: async (rule) => {
        alive();
        checkRule(rule);
        state.policies.set(tenantId, { tenant_id: tenantId, keep_last: rule.keep_last, keep_days: rule.keep_days });
        this.journal.push(`setPolicy ${tenantId}`);
      },
      applyRetention: async (rule) => {
        alive();
        const newest = new Map<string, number>();
        for (const row of mine()) newest.set(row.file_id, Math.max(newest.get(row.file_id) ?? 0, row.version));
        const cutoff = rule.keep_days !== null ? this.now().getTime() - rule.keep_days * DAY_MS : 0;
        const expired = (row: VersionRow) => {
          const top = newest.get(row.file_id) ?? 0;
          if (rule.keep_last !== null) return row.version <= top - rule.keep_last;
          if (rule.keep_days !== null) return row.created_at.getTime() < cutoff && row.version < top;
          return false;
        };
        const before = state.versions.length;
        state.versions = state.versions.filter((row) => row.tenant_id !== tenantId || !expired(row));
        const removed = before - state.versions.length;
        this.journal.push(`applyRetention ${tenantId} -> ${removed}`);
        return removed;
      },
    };
  }

  async policies(environment: Environment): Promise<PolicyRow[]> {
    return [...this.state[environment].policies.values()].filter((p) => p.keep_last !== null || p.keep_days !== null).map((p) => ({ ...p }));
  }

  async blobInUse(environment: Environment, sha256: string): Promise<boolean> {
    return this.state[environment].versions.some((row) => row.sha256 === sha256);
  }

  async blobsWithVersions(environment: Environment): Promise<BlobUse[]> {
    const blobs = new Map<string, BlobUse>();
    const rows = [...this.state[environment].versions].sort(
      (a, b) => compare(a.tenant_id, b.tenant_id) || compare(a.file_id, b.file_id) || byVersionAndRank(a, b),
    );
    for (const row of rows) {
      const key = `${row.sha256} ${row.size}`;
      const blob = blobs.get(key) ?? { sha256: row.sha256, size: row.size, versions: [] };
      blob.versions.push({ tenant_id: row.tenant_id, file_id: row.file_id, version: row.version, event: row.event });
      blobs.set(key, blob);
    }
    return [...blobs.values()].sort((a, b) => compare(a.sha256, b.sha256) || a.size - b.size);
  }

  async environmentStats(environment: Environment): Promise<{ versions: number; bytes: number }> {
    const rows = this.state[environment].versions;
    return { versions: rows.length, bytes: distinctBytes(rows) };
  }
}

interface FakeFile extends FileObject {
  tenant_id: string;
  environment: Environment;
  deleted: boolean;
}

/** A restore the files port was asked for, and whether it had to read the backup's bytes. */
export interface RestoreCall {
  tenant_id: string;
  id: string;
  version: RestorableVersion;
  opened: boolean;
}

/**
 * The files service in memory: its blob store per environment (where the backup copies from),
 * its files, and the File_* events its writes emit, in commit order (`events`, drained by
 * `take`). Each write moves the shared clock a second on. The write helpers (`create`, `update`, `remove`...) are the tests' fixtures; the
 * FilesPort methods answer as the files service does: another tenant's, environment's or
 * (for a user who is not an admin) owner's file is 404 not_found.
 */
export class FakeFiles implements FilesPort {
  readonly blobs: Record<Environment, MemoryBlobStore> = { live: new MemoryBlobStore(), test: new MemoryBlobStore() };
  readonly files = new Map<string, FakeFile>();
  readonly restores: RestoreCall[] = [];
  readonly removed: string[] = [];
  private events: BusEvent[] = [];
  private fileSequence = 0;
  private eventSequence = 0;

  constructor(private readonly clock: FakeClock = new FakeClock()) {}

  /** The events emitted since the last call, oldest first. */
  take(): BusEvent[] {
    const taken = this.events;
    this.events = [];
    return taken;
  }

  async create(
    principal: TenantPrincipal,
    input: { name: string; content: string | Buffer; path?: string; owner_id?: string | null; content_type?: string },
  ): Promise<FileObject> {
    const stored = await this.blobs[principal.environment].put(Readable.from([Buffer.from(input.content)]));
    const at = this.tick();
    const id = `file_${String(++this.fileSequence).padStart(6, '0')}`;
    this.assertNameFree(principal, input.path ?? '/', input.name, id);
    const file: FakeFile = {
      id,
      name: input.name,
      path: input.path ?? '/',
      size: stored.size,
      content_type: input.content_type ?? 'text/plain',
      sha256: stored.sha256,
      version: 1,
      owner_id: input.owner_id === undefined ? ownerOf(principal) : input.owner_id,
      created_at: at,
      updated_at: at,
      tenant_id: principal.tenantId,
      environment: principal.environment,
      deleted: false,
    };
    this.files.set(id, file);
    return this.emit(principal, 'File_create', file);
  }

  /** A new version: new content, or a new name. */
  async update(principal: TenantPrincipal, id: string, change: { content?: string | Buffer; name?: string }): Promise<FileObject> {
    const file = this.visible(principal, id);
    if (change.name !== undefined) this.assertNameFree(principal, file.path, change.name, id);
    const stored = change.content !== undefined ? await this.blobs[principal.environment].put(Readable.from([Buffer.from(change.content)])) : file;
    Object.assign(file, { sha256: stored.sha256, size: stored.size, name: change.name ?? file.name, version: file.version + 1, updated_at: this.tick() });
    return this.emit(principal, 'File_update', file);
  }

  async get(principal: TenantPrincipal, id: string): Promise<FileObject> {
    return publicOf(this.visible(principal, id));
  }

  async list(principal: TenantPrincipal, query: { limit: number; cursor?: string }): Promise<{ data: FileObject[]; next_cursor: string | null }> {
    const all = [...this.files.values()]
      .filter((file) => this.sees(principal, file) && !file.deleted && (query.cursor === undefined || file.id > query.cursor))
      .sort((a, b) => compare(a.id, b.id));
    const page = all.slice(0, query.limit);
    return { data: page.map(publicOf), next_cursor: all.length > query.limit ? (page.at(-1)?.id ?? null) : null };
  }

  async remove(principal: TenantPrincipal, id: string): Promise<void> {
    const file = this.visible(principal, id);
    file.deleted = true;
    this.removed.push(id);
    this.emit(principal, 'File_delete', file, this.tick());
  }

  async restoreVersion(principal: TenantPrincipal, id: string, version: RestoreCall['version'], open: () => Promise<AsyncIterable<Uint8Array>>): Promise<FileObject> {
    const file = this.files.get(id);
    // A deleted file may be restored; another tenant's, environment's or owner's may not.
    if (!file || !this.sees(principal, file)) throw new AppError(Errors.notFound, `No file ${id}`);
    const call: RestoreCall = { tenant_id: principal.tenantId, id, version: { ...version }, opened: false };
    this.restores.push(call);
    const blobs = this.blobs[principal.environment];
    if (!(await blobs.stat(version.sha256))) {
      call.opened = true;
      const stored = await blobs.put(await open());
      if (stored.sha256 !== version.sha256 || stored.size !== version.size) throw new Error(`restore of ${id}: the backup's bytes hash to ${stored.sha256}`);
    }
    this.assertNameFree(principal, version.path, version.name, id);
    const type = file.deleted ? 'File_create' : 'File_update';
    Object.assign(file, {
      name: version.name,
      path: version.path,
      size: version.size,
      content_type: version.content_type,
      sha256: version.sha256,
      version: file.version + 1,
      updated_at: this.tick(),
      deleted: false,
    });
    return this.emit(principal, type, file);
  }

  /** Each write moves the clock a second on, so that writes have times of their own. */
  private tick(): string {
    this.clock.advance(1000);
    return this.clock.now().toISOString();
  }

  private sees(principal: TenantPrincipal, file: FakeFile): boolean {
    if (file.tenant_id !== principal.tenantId || file.environment !== principal.environment) return false;
    return principal.kind !== 'user' || isTenantAdmin(principal) || file.owner_id === principal.userId;
  }

  private visible(principal: TenantPrincipal, id: string): FakeFile {
    const file = this.files.get(id);
    if (!file || file.deleted || !this.sees(principal, file)) throw new AppError(Errors.notFound, `No file ${id}`);
    return file;
  }

  private assertNameFree(principal: TenantPrincipal, path: string, name: string, id: string): void {
    for (const other of this.files.values()) {
      if (other.id !== id && !other.deleted && other.tenant_id === principal.tenantId && other.environment === principal.environment && other.path === path && other.name === name) {
        throw new AppError(Errors.fileExists, `${path} ${name} already exists`);
      }
    }
  }

  private emit(principal: TenantPrincipal, type: BusEvent['type'], file: FakeFile, occurredAt = file.updated_at): FileObject {
    const snapshot = publicOf(file);
    this.events.push({
      event_id: `evt_${String(++this.eventSequence).padStart(8, '0')}`,
      type,
      tenant_id: principal.tenantId,
      environment: principal.environment,
      occurred_at: occurredAt,
      actor: { type: 'key', id: 'fake' },
      owner_id: file.owner_id,
      data: { file: snapshot },
    });
    return snapshot;
  }
}

const ownerOf = (principal: TenantPrincipal) => (principal.kind === 'user' ? principal.userId : null);

function publicOf(file: FakeFile): FileObject {
  const { tenant_id: _tenant, environment: _environment, deleted: _deleted, ...object } = file;
  return { ...object };
}
