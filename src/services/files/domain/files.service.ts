import { createHash } from 'node:crypto';
import type { RawBuilder } from 'kysely';
import type { Logger } from 'pino';
import { type Databases, ENVIRONMENTS, isRefusal, type Tx, tenantBatch, tenantRead, withTenant } from '../../../adapters/db/pg.ts';
import { AppError, Errors, fail } from '../../../core/errors.ts';
import type { FileEventType, FileObject, NewEvent } from '../../../core/events.ts';
import { newId } from '../../../core/ids.ts';
import { decodeCursor, pageOf } from '../../../core/pagination.ts';
import { type BlobStore, BlobTooLargeError, type ByteRange, type EventBus, type StagedBlob, type StoredBlob } from '../../../core/ports.ts';
import { actorOf, type Environment, isTenantAdmin, type TenantPrincipal } from '../../../core/principal.ts';
import type { RestorableVersion } from '../../../core/service-ports.ts';
import { traceOf, traceparentOf } from '../../../core/trace.ts';
import * as repo from '../repo/files.repo.ts';
import { type Idempotency, principalKey, replayOf, type WriteAnswer } from './idempotency.ts';
import { normalizeContentType, normalizePath, validateName } from './names.ts';


export type { FileObject } from '../../../core/events.ts';

/** What a write changes in the tenant's usage counters. */
type UsageDelta = { files: number; bytes: number; versions: number };

export interface Usage {
  files: number;
  bytes: number;
  versions: number;
  backup_bytes: number;
  quota_bytes: number | null;
}

export interface FilesLimits {
  maxUploadBytes: number;
  /** Per tenant and environment; null: unlimited. */
  tenantQuotaBytes: number | null;
}

export interface FilesDeps {
  databases: Databases;
  blobs: Record<Environment, BlobStore>;
  bus: EventBus;
  limits: FilesLimits;
  logger: Logger;
  /**
   * The bytes the backup store holds for the principal's tenant and environment, as the backup
   * service counts them (distinct content). The files service never reads the backup's tables:
   * the composition root passes this in. Absent where usage is not served (the standalone
   * backup process); `usage` then fails rather than report a made-up figure.
   */
  backupBytes?: (principal: TenantPrincipal) => Promise<number>;
}

export const IDEMPOTENCY_TTL_SECONDS = 24 * 3600;
/** An unreferenced blob younger than this may belong to an upload whose transaction has not committed yet. */
export const ORPHAN_BLOB_GRACE_MS = 3600 * 1000;

export function toFileObject(row: repo.FileRow): FileObject {
  return {
    id: row.id,
    name: row.name,
    path: row.path,
    size: row.size,
    content_type: row.content_type,
    sha256: row.sha256,
    version: row.version,
    owner_id: row.user_id,
    created_at: row.created_at.toISOString(),
    updated_at: row.updated_at.toISOString(),
  };
}

/**
 * Whose files a principal sees (null: every file of the tenant and environment). A user who is
 * not an admin sees their own files only; keys and admins see the tenant's. That includes
 * application keys (within their files:* scopes): they act for a client app, not for a user,
 * so there is no user to narrow them to.
 */
export function ownerScope(principal: TenantPrincipal): string | null {
  return principal.kind === 'user' && !isTenantAdmin(principal) ? principal.userId : null;
}

const QUOTA_REFUSAL = 'This upload would take the tenant over its storage quota; nothing was kept';

const notFound = (id: string) => new AppError(Errors.notFound, `No file ${id}`);

/** `If-Match: "<sha256>"` (a list, or `*`) against the current content. */
export function etagMatches(header: string, sha256: string): boolean {
  return header
    .split(',')
    .map((tag) => tag.trim().replace(/^W\//, ''))
    .some((tag) => tag === '*' || tag === `"${sha256}"`);
}

/**
 * The files service: metadata in PostgreSQL, bytes in the environment's BlobStore, and one
 * File_* event per committed change, appended in the same transaction (outbox).
 *
 * Write order for content: the blob is made durable first (`stageContent`, then commit), then ONE
 * transaction records the version, the usage, the idempotency answer and the event. A crash
 * before the commit leaves at most an unreferenced blob (swept after a grace period), never
 * a row without its bytes.
 */
export class FilesService {
  constructor(private readonly deps: FilesDeps) {}

  private ownerScope(principal: TenantPrincipal): string | null {
    return ownerScope(principal);
  }

  private db(principal: TenantPrincipal) {
    return this.deps.databases.environments[principal.environment];
  }

  private inTenant<T>(principal: TenantPrincipal, work: (trx: Tx) => Promise<T>): Promise<T> {
    return withTenant(this.db(principal), principal.tenantId, work);
  }

  /** A single tenant-bound read, in one round trip. */
  private read<Row>(principal: TenantPrincipal, statement: RawBuilder<Row>): Promise<Row[]> {
    return tenantRead(this.db(principal), principal.tenantId, statement);
  }

  private async usageOf(principal: TenantPrincipal): Promise<{ files: number; bytes: number; versions: number }> {
    const [row] = await this.read(principal, repo.usageSelect(principal.tenantId));
    return row ?? { files: 0, bytes: 0, versions: 0 };
  }

  /** Who owns what this principal uploads. Only account keys and admins may name an owner. */
  resolveOwner(principal: TenantPrincipal, ownerId: string | undefined): string | null {
    if (ownerId !== undefined) {
      if (!isTenantAdmin(principal)) fail(Errors.forbidden, 'Only an account key or an admin user may set owner_id');
      if (!/^[a-z0-9_]{1,100}$/.test(ownerId)) {
        fail(Errors.validationFailed, 'owner_id is not a user id', { errors: [{ field: 'owner_id', message: 'is not a user id' }] });
      }
      return ownerId;
    }
    return principal.kind === 'user' ? principal.userId : null;
  }

  /** The largest upload this principal may send now, and whether the quota (not the size limit) sets it. */
  async uploadLimit(principal: TenantPrincipal): Promise<{ maxBytes: number; byQuota: boolean }> {
    const { maxUploadBytes, tenantQuotaBytes } = this.deps.limits;
    if (tenantQuotaBytes === null) return { maxBytes: maxUploadBytes, byQuota: false };
    const used = (await this.usageOf(principal)).bytes;
    const left = Math.max(0, tenantQuotaBytes - used);
    return left < maxUploadBytes ? { maxBytes: left, byQuota: true } : { maxBytes: maxUploadBytes, byQuota: false };
  }

  private tooLarge(limit: { maxBytes: number; byQuota: boolean }): AppError {
    return limit.byQuota
      ? new AppError(Errors.quotaExceeded, 'This upload would take the tenant over its storage quota; nothing was kept')
      : new AppError(Errors.payloadTooLarge, `Uploads are limited to ${this.deps.limits.maxUploadBytes} bytes; nothing was kept`);
  }

  /**
   * Checks a declared size (Content-Length) before any byte is read: a body known to be too
   * large is refused at once. `slack` allows for multipart framing around the content.
   */
  async checkDeclaredSize(principal: TenantPrincipal, declared: number | undefined, slack = 0): Promise<{ maxBytes: number; byQuota: boolean }> {
    const limit = await this.uploadLimit(principal);
    if (declared !== undefined && declared > limit.maxBytes + slack) throw this.tooLarge(limit);
    return limit;
  }

  /**
   * Streams content into the environment's blob store (hashing as it goes), durable on return
   * but kept only once committed: the request that carries it may still fail after the content
   * (a multipart body cut short), and then nothing must be left.
   */
  async stageContent(principal: TenantPrincipal, source: AsyncIterable<Uint8Array>, limit: { maxBytes: number; byQuota: boolean }): Promise<StagedBlob> {
    try {
      return await this.deps.blobs[principal.environment].stage(source, { maxBytes: limit.maxBytes });
    } catch (error) {
      if (error instanceof BlobTooLargeError) throw this.tooLarge(limit);
      throw error;
    }
  }

  /** Reads and hashes content without keeping it: enough to tell a retry from a different request. */
  async hashContent(source: AsyncIterable<Uint8Array>, limit: { maxBytes: number; byQuota: boolean }): Promise<{ sha256: string; size: number }> {
    const hash = createHash('sha256');
    let size = 0;
    for await (const chunk of source) {
      size += chunk.byteLength;
      // A replay carries a body as long as the first request's, which fitted then.
      if (size > this.deps.limits.maxUploadBytes) throw this.tooLarge({ ...limit, byQuota: false });
      hash.update(chunk);
    }
    return { sha256: hash.digest('hex'), size };
  }

  /** The live answer recorded under this principal's Idempotency-Key, if any. */
  async recordedAnswer(principal: TenantPrincipal, key: string): Promise<repo.IdempotencyRow | null> {
    const [row] = await this.read(principal, repo.idempotencySelect(principal.tenantId, principalKey(principal), key));
    return row ?? null;
  }

  /** Fails fast, before a byte is uploaded, on what can be known from the request line alone. */
  async precheckCreate(principal: TenantPrincipal, input: { name: string; path: string; owner: string | null }): Promise<void> {
    const taken = await this.read(principal, repo.nameTakenSelect(principal.tenantId, input.owner, input.path, input.name));
    if (taken.length > 0) fail(Errors.fileExists, `${input.path === '/' ? '' : input.path}/${input.name} already exists`);
  }

  /** Fails fast on a file the caller cannot see, or a stale If-Match, before the new content is uploaded. */
  async precheckReplace(principal: TenantPrincipal, id: string, ifMatch: string | undefined): Promise<void> {
    const file = await this.get(principal, id);
    if (ifMatch !== undefined && !etagMatches(ifMatch, file.sha256)) {
      fail(Errors.versionConflict, `The file's content is now "${file.sha256}" (version ${file.version})`);
    }
  }

  async create(
    principal: TenantPrincipal,
    input: { name: string; path: string; owner: string | null; contentType?: string; blob: StoredBlob; idempotency?: Idempotency },
  ): Promise<WriteAnswer> {
    const now = new Date();
    const row: repo.FileRow = {
      id: newId('file'),
      tenant_id: principal.tenantId,
      user_id: input.owner,
      name: input.name,
      path: input.path,
      size: input.blob.size,
      content_type: normalizeContentType(input.contentType),
      sha256: input.blob.sha256,
      version: 1,
      created_at: now,
      updated_at: now,
    };
    const file = toFileObject(row);
    const { idempotency } = input;
    // recordWrite's transaction, in its order, but nothing in it waits on a row it wrote, so it
    // goes as one tenantBatch: one round trip. Its checks refuse the batch (see refuseIfNone).
    const statements = [
      ...(idempotency ? [repo.claimIdempotency({ ...this.idempotencyScope(principal, idempotency), answer: { status: 201, response: file } })] : []),
      repo.insertFile(row),
      this.deps.bus.appendStatement(principal.environment, this.fileEvent(principal, 'File_create', file)),
      repo.addUsage(principal.tenantId, { files: 1, bytes: row.size, versions: 1 }, this.deps.limits.tenantQuotaBytes),
    ];
    try {
      await tenantBatch(this.db(principal), principal.tenantId, statements);
    } catch (error) {
      if (repo.isUniqueViolation(error, 'file_name_unique')) fail(Errors.fileExists, `${input.path === '/' ? '' : input.path}/${input.name} already exists`);
      return this.afterRefusal(principal, idempotency, error);
    }
    return { status: 201, file, replayed: false };
  }

  async replace(
    principal: TenantPrincipal,
    id: string,
    input: { contentType?: string; blob: StoredBlob; ifMatch?: string; idempotency?: Idempotency },
  ): Promise<WriteAnswer> {
    return this.recordWrite(principal, input.idempotency, 200, id, async (trx, current) => {
      if (input.ifMatch !== undefined && !etagMatches(input.ifMatch, current.sha256)) {
        fail(Errors.versionConflict, `The file's content is now "${current.sha256}" (version ${current.version})`);
      }
      const row = await repo.updateFile(trx, principal.tenantId, id, {
        name: current.name,
        path: current.path,
        size: input.blob.size,
        content_type: normalizeContentType(input.contentType),
        sha256: input.blob.sha256,
        version: current.version + 1,
      });
      return { row, type: 'File_update', usage: { files: 0, bytes: row.size, versions: 1 } };
    });
  }

  /** Renames or moves. Every change makes a version (same bytes, new name or folder), so history shows it. */
  async update(principal: TenantPrincipal, id: string, input: { name?: string; path?: string }): Promise<FileObject> {
    const name = input.name === undefined ? undefined : validateName(input.name);
    const path = input.path === undefined ? undefined : normalizePath(input.path);
    const answer = await this.recordWrite(principal, undefined, 200, id, async (trx, current) => {
      const next = { name: name ?? current.name, path: path ?? current.path };
      if (next.name === current.name && next.path === current.path) return { row: current, type: null };
      let row: repo.FileRow;
      try {
        row = await repo.updateFile(trx, principal.tenantId, id, { ...current, ...next, version: current.version + 1 });
      } catch (error) {
        if (repo.isUniqueViolation(error, 'file_name_unique')) fail(Errors.fileExists, `${next.path === '/' ? '' : next.path}/${next.name} already exists`);
        throw error;
      }
      return { row, type: 'File_update', usage: { files: 0, bytes: 0, versions: 1 } };
    });
    return answer.file;
  }

  /** Deletes the live file; its versions stay recorded (and backed up). */
  async remove(principal: TenantPrincipal, id: string): Promise<void> {
    await this.recordWrite(principal, undefined, 204, id, async (trx, current) => {
      await repo.markDeleted(trx, principal.tenantId, id);
      return { row: current, type: 'File_delete', usage: { files: -1, bytes: 0, versions: 0 } };
    });
  }

  /**
   * Makes an earlier version current again, as the next version (history is never rewritten):
   * the backup service's restore. A deleted file comes back under its id (File_create);
   * a live one gets a File_update. The bytes are read from `open` (the backup store) only when
   * this store lacks them, and are durable here before the row that points at them commits.
   */
  async restoreVersion(
    principal: TenantPrincipal,
    id: string,
    version: RestorableVersion,
    open: () => Promise<AsyncIterable<Uint8Array>>,
  ): Promise<FileObject> {
    const owner = this.ownerScope(principal);
    const visible = (row: (repo.FileRow & { deleted: boolean }) | null) => row !== null && (owner === null || row.user_id === owner);
    const before = await this.inTenant(principal, (trx) => repo.lockFileForRestore(trx, principal.tenantId, id));
    if (!visible(before)) throw notFound(id);
    const blobs = this.deps.blobs[principal.environment];
    if (!(await blobs.stat(version.sha256))) {
      const stored = await blobs.put(await open());
      if (stored.sha256 !== version.sha256 || stored.size !== version.size) {
        throw new Error(`restore of ${id}: the backup's bytes hash to ${stored.sha256} (${stored.size} bytes), not ${version.sha256}`);
      }
    }
    const name = `${version.path === '/' ? '' : version.path}/${version.name}`;
    return this.inTenant(principal, async (trx) => {
      const current = await repo.lockFileForRestore(trx, principal.tenantId, id);
      if (!current || !visible(current)) throw notFound(id);
      let row: repo.FileRow;
      try {
        row = await repo.restoreFile(trx, principal.tenantId, id, {
          name: version.name,
          path: version.path,
          size: version.size,
          content_type: version.content_type,
          sha256: version.sha256,
          version: current.version + 1,
        });
      } catch (error) {
        if (repo.isUniqueViolation(error, 'file_name_unique')) fail(Errors.fileExists, `${name} already exists`);
        throw error;
      }
      const file = toFileObject(row);
      await this.deps.bus.append(trx, principal.environment, this.fileEvent(principal, current.deleted ? 'File_create' : 'File_update', file));
      // Last, as in recordWrite: the usage row is every write's.
      await this.addUsage(trx, principal, { files: current.deleted ? 1 : 0, bytes: row.size, versions: 1 });
      return file;
    });
  }

  async get(principal: TenantPrincipal, id: string): Promise<FileObject> {
    const [row] = await this.read(principal, repo.fileSelect(principal.tenantId, id, this.ownerScope(principal)));
    if (!row) throw notFound(id);
    return toFileObject(row);
  }

  async list(principal: TenantPrincipal, query: { path?: string; limit: number; cursor?: string }) {
    const before = decodeCursor(query.cursor);
    const path = query.path === undefined ? undefined : normalizePath(query.path);
    const rows = await this.read(principal, repo.filesListSelect(principal.tenantId, { owner: this.ownerScope(principal), path, before, limit: query.limit + 1 }));
    return pageOf(rows, query.limit, toFileObject);
  }

  /** A stream of a file's bytes (or of one range of them), from the caller's environment. */
  async openContent(principal: TenantPrincipal, file: FileObject, range?: ByteRange) {
    return this.deps.blobs[principal.environment].get(file.sha256, range);
  }

  /** The tenant's storage use in the principal's environment, with what its backups hold. */
  async usage(principal: TenantPrincipal): Promise<Usage> {
    const { backupBytes } = this.deps;
    if (!backupBytes) throw new Error('usage needs the backup service (FilesDeps.backupBytes)');
    const [used, backup_bytes] = await Promise.all([
      this.usageOf(principal),
      backupBytes(principal),
    ]);
    return { ...used, backup_bytes, quota_bytes: this.deps.limits.tenantQuotaBytes };
  }

  /**
   * Deletes idempotency answers past their 24 h, and blobs no version uses that are older than
   * the grace period (left by a transaction that failed or a process that died after `put`).
   */
  async sweep(): Promise<{ idempotency: number; blobs: number }> {
    let idempotency = 0;
    let blobs = 0;
    for (const environment of ENVIRONMENTS) {
      const db = this.deps.databases.environments[environment];
      idempotency += await repo.deleteExpiredIdempotency(db);
      const cutoff = Date.now() - ORPHAN_BLOB_GRACE_MS;
      for await (const blob of this.deps.blobs[environment].list()) {
        if (blob.modifiedAt.getTime() >= cutoff) continue;
        if (await repo.blobInUse(db, blob.key)) continue;
        // Checked again just before deleting: a put of the same bytes refreshes the mtime.
        const fresh = await this.deps.blobs[environment].stat(blob.key);
        if (!fresh || fresh.modifiedAt.getTime() >= cutoff) continue;
        await this.deps.blobs[environment].delete(blob.key);
        blobs++;
      }
    }
    if (idempotency || blobs) this.deps.logger.info({ idempotency, blobs }, 'files sweep removed expired answers and orphan blobs');
    return { idempotency, blobs };
  }

  private async lockVisible(trx: Tx, principal: TenantPrincipal, id: string): Promise<repo.FileRow> {
    const row = await repo.lockFile(trx, principal.tenantId, id);
    const owner = this.ownerScope(principal);
    if (!row || (owner !== null && row.user_id !== owner)) throw notFound(id);
    return row;
  }

  private async addUsage(trx: Tx, principal: TenantPrincipal, delta: UsageDelta): Promise<void> {
    try {
      await repo.addUsage(principal.tenantId, delta, this.deps.limits.tenantQuotaBytes).execute(trx);
    } catch (error) {
      if (isRefusal(error, repo.QUOTA_REFUSED)) fail(Errors.quotaExceeded, QUOTA_REFUSAL);
      throw error;
    }
  }

  /** The File_* event of a change to `file`. */
  private fileEvent(principal: TenantPrincipal, type: FileEventType, file: FileObject): NewEvent {
    return { type, tenant_id: principal.tenantId, actor: actorOf(principal), owner_id: file.owner_id, data: { file }, traceparent: traceparentOf(traceOf(principal)) };
  }

  private idempotencyScope(principal: TenantPrincipal, idempotency: Idempotency) {
    return {
      tenant_id: principal.tenantId,
      principal: principalKey(principal),
      key: idempotency.key,
      fingerprint: idempotency.fingerprint,
      ttlSeconds: IDEMPOTENCY_TTL_SECONDS,
    };
  }

  /**
   * What a write refused by its own transaction answers: over the quota, 413; its
   * Idempotency-Key held by a twin that committed first, the twin's answer replayed.
   */
  private async afterRefusal(principal: TenantPrincipal, idempotency: Idempotency | undefined, error: unknown): Promise<WriteAnswer> {
    if (isRefusal(error, repo.QUOTA_REFUSED)) fail(Errors.quotaExceeded, QUOTA_REFUSAL);
    if (!idempotency || !isRefusal(error, repo.KEY_TAKEN)) throw error;
    const recorded = await this.recordedAnswer(principal, idempotency.key);
    if (!recorded) throw error;
    return replayOf(recorded, idempotency.fingerprint);
  }

  /**
   * One write transaction, in this order: lock the file row (when `lockId` names one; it is
   * the FIRST statement, see repo.lockFile), claim the Idempotency-Key, make the change, record
   * the answer, append the File_* event carrying the File object, and last add to the tenant's
   * usage (see below), all in one commit.
   * Claiming the key before the change makes a concurrent twin wait on the key and then
   * replay this answer, instead of failing on the change (file_exists, version_conflict).
   */
  private async recordWrite(
    principal: TenantPrincipal,
    idempotency: Idempotency | undefined,
    status: number,
    lockId: string | null,
    change: (trx: Tx, locked: repo.FileRow) => Promise<{ row: repo.FileRow; type: FileEventType | null; usage?: UsageDelta }>,
  ): Promise<WriteAnswer> {
    try {
      return await this.inTenant(principal, async (trx) => {
        const locked = lockId === null ? undefined : await this.lockVisible(trx, principal, lockId);
        const scope = idempotency && this.idempotencyScope(principal, idempotency);
        if (scope) await repo.claimIdempotency(scope).execute(trx);
        const { row, type, usage } = await change(trx, locked as repo.FileRow);
        const file = toFileObject(row);
        if (scope) await repo.completeIdempotency({ ...scope, status, response: file }).execute(trx);
        if (type) await this.deps.bus.append(trx, principal.environment, this.fileEvent(principal, type, file));
        // Last before the commit: every write of the tenant updates this one row, so its lock
        // is held from here to the end of the commit, and writes wait on each other for that only.
        if (usage) await this.addUsage(trx, principal, usage);
        return { status, file, replayed: false };
      });
    } catch (error) {
      return this.afterRefusal(principal, idempotency, error);
    }
  }
}
