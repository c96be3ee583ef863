import type { Logger } from 'pino';
import { type Databases, ENVIRONMENTS, withTenant } from '../../../adapters/db/pg.ts';
import { AppError, Errors, fail } from '../../../core/errors.ts';
import { newId } from '../../../core/ids.ts';
import { decodeCursor, pageOf } from '../../../core/pagination.ts';
import type { BlobStore, ByteRange, Mailer } from '../../../core/ports.ts';
import type { Environment, TenantPrincipal } from '../../../core/principal.ts';
import type { AuditPort, FilesExportPort, UserDirectoryPort } from '../../../core/service-ports.ts';
import * as repo from '../repo/exports.repo.ts';
import { DownloadTokens } from './download-token.ts';
import { throttledProgress } from './progress.ts';
import { ExportFailure, ExportStopped, writeZip } from './zip-writer.ts';

export interface ExportsLimits {
  /** Pending or running exports per tenant and environment. */
  maxRunning: number;
  /** Content bytes one zip may hold. */
  maxBytes: number;
  /** Finished exports kept per tenant and environment. */
  keep: number;
  /** How long a finished export (and its link) lives. */
  ttlHours: number;
}

export interface ExportsDeps {
  databases: Databases;
  files: FilesExportPort;
  /** Where finished zips are kept, per environment (content addressed, durable once `put` resolves). */
  store: Record<Environment, BlobStore>;
  mailer: Mailer;
  users: UserDirectoryPort;
  audit: AuditPort;
  secretKey: string;
  publicUrl: () => string;
  limits: ExportsLimits;
  logger: Logger;
  /** Told of each new export, so that a worker in this process starts it at once. */
  onCreated?: () => void;
}

/** Runs of one export cut short by a stop of the server before it fails for good. */
export const MAX_ATTEMPTS = 3;

/** How often a run writes its progress at most: written after every page, it held up the zip 20 times for 1,000 files. */
const PROGRESS_EVERY_MS = 250;

export interface ExportView {
  id: string;
  status: repo.ExportRow['status'];
  files_total: number | null;
  files_done: number;
  bytes: number;
  created_at: string;
  completed_at: string | null;
  expires_at: string | null;
  error: string | null;
}

export interface ExportRequest {
  include_content?: boolean;
  include_versions?: boolean;
  path?: string;
  email?: string;
}

/** Who made an export: only they see it (a user, or the key that asked). */
function creatorOf(principal: TenantPrincipal): string {
  return principal.kind === 'user' ? `user:${principal.userId}` : `key:${principal.keyId}`;
}

function viewOf(row: repo.ExportRow): ExportView {
  // Past its time it is expired at once, whether or not the sweep has been by yet.
  const due = (row.status === 'ready' || row.status === 'failed') && row.expires_at !== null && row.expires_at.getTime() <= Date.now();
  return {
    id: row.id,
    status: due ? 'expired' : row.status,
    files_total: row.files_total,
    files_done: row.files_done,
    bytes: row.bytes,
    created_at: row.created_at.toISOString(),
    completed_at: row.completed_at?.toISOString() ?? null,
    expires_at: row.expires_at?.toISOString() ?? null,
    error: row.error,
  };
}

const notFound = (id: string) => new AppError(Errors.notFound, `No export ${id}`);

/**
 * Zip exports: a durable job per export (a row of `exports.export`), run by one worker of the
 * installation, one at a time. A run builds the zip straight into the export store; the row
 * turns `ready` only after the zip is durable there, so a crash never leaves a half zip served
 * as ready: a run cut short is run again from the start (`recover`), at most MAX_ATTEMPTS times.
 */
export class ExportsService {
  readonly tokens: DownloadTokens;
  /** Stops the run in hand, if any (see `stop`). */
  private stopRun: ((reason: Error) => void) | undefined;

  constructor(private readonly deps: ExportsDeps) {
    this.tokens = new DownloadTokens(deps.secretKey);
  }

  private db(environment: Environment) {
    return this.deps.databases.environments[environment];
  }

  async create(principal: TenantPrincipal, input: ExportRequest, context: { ip: string | null }): Promise<ExportView> {
    let email = input.email;
    if (email === undefined) {
      if (principal.kind !== 'user') fail(Errors.validationFailed, 'email is required with a key: the link is mailed there', { errors: [{ field: 'email', message: 'is required with a key' }] });
      email = await this.deps.users.emailOf(principal);
    }
    // An invalid folder fails now, not in the background (the scan normalises it as paths are).
    await this.deps.files.scan(principal, { limit: 1, pathPrefix: input.path });
    const row = await withTenant(this.db(principal.environment), principal.tenantId, async (trx) => {
      const created = await repo.insertExport(
        trx,
        {
          id: newId('exp'),
          tenant_id: principal.tenantId,
          creator: creatorOf(principal),
          principal,
          include_content: input.include_content ?? true,
          include_versions: input.include_versions ?? false,
          path: input.path ?? null,
          email,
        },
        this.deps.limits.maxRunning,
      );
      if (created) await repo.expireBeyondKept(trx, principal.tenantId, this.deps.limits.keep);
      return created;
    });
    if (!row) {
      throw new AppError(Errors.rateLimited, `At most ${this.deps.limits.maxRunning} exports may be pending or running at once; try again when one has finished`, {
        headers: { 'Retry-After': '60' },
      });
    }
    this.deps.onCreated?.();
    await this.deps.audit.record(principal, { type: 'export_created', ip: context.ip, detail: { export_id: row.id, include_versions: row.include_versions, path: row.path } });
    return viewOf(row);
  }

  async get(principal: TenantPrincipal, id: string): Promise<ExportView> {
    const row = await withTenant(this.db(principal.environment), principal.tenantId, (trx) => repo.findExport(trx, principal.tenantId, creatorOf(principal), id));
    if (!row) throw notFound(id);
    return viewOf(row);
  }

  async list(principal: TenantPrincipal, query: { limit: number; cursor?: string }) {
    const before = decodeCursor(query.cursor);
    const rows = await withTenant(this.db(principal.environment), principal.tenantId, (trx) => repo.listExports(trx, principal.tenantId, creatorOf(principal), query.limit + 1, before));
    return pageOf(rows, query.limit, viewOf);
  }

  /**
   * A ready export's zip, for its creator's credential or a valid token of that export. Anything
   * else (another's export, a forged, expired or other export's token, not ready) is 404 alike.
   */
  async download(access: { principal: TenantPrincipal | null; token?: string; ip: string | null }, id: string) {
    let row: repo.ExportRow | null = null;
    let environment: Environment | null = null;
    if (access.token !== undefined) {
      environment = this.tokens.verify(id, access.token);
      if (environment) row = await repo.findExportById(this.db(environment), id);
    } else if (access.principal) {
      const principal = access.principal;
      environment = principal.environment;
      row = await withTenant(this.db(environment), principal.tenantId, (trx) => repo.findExport(trx, principal.tenantId, creatorOf(principal), id));
    }
    if (!row || !environment || row.status !== 'ready' || !row.archive_key || row.archive_size === null || (row.expires_at && row.expires_at.getTime() <= Date.now())) {
      throw notFound(id);
    }
    const store = this.deps.store[environment];
    const key = row.archive_key;
    const owner = row.principal as TenantPrincipal;
    return {
      sha256: key,
      size: row.archive_size,
      name: `bantu-export-${row.id}.zip`,
      completedAt: (row.completed_at ?? row.created_at).toISOString(),
      open: async (range?: ByteRange) => {
        // One audit entry per download, not per resumed piece of it.
        if (!range || range.start === 0) {
          await this.deps.audit.record(access.principal ?? owner, { type: 'export_downloaded', ip: access.ip, detail: { export_id: id, with: access.token ? 'token' : 'credentials' } });
        }
        return store.get(key, range);
      },
    };
  }

  /** Ends the run in hand at once (the process stops): nothing of it is kept, and it runs again later. */
  stop(): void {
    this.stopRun?.(new ExportStopped());
  }

  /** Exports a stopped worker left running go back to the queue (or fail after MAX_ATTEMPTS). */
  async recover(): Promise<void> {
    for (const environment of ENVIRONMENTS) {
      const { requeued, failed } = await repo.requeueAbandoned(this.db(environment), MAX_ATTEMPTS);
      if (requeued || failed) this.deps.logger.warn({ environment, requeued, failed }, 'exports cut short by a stop: requeued or failed');
    }
  }

  /** Runs the oldest pending export, if any; false when there was none. */
  async runNext(): Promise<boolean> {
    for (const environment of ENVIRONMENTS) {
      const row = await repo.claimNext(this.db(environment));
      if (!row) continue;
      await this.run(environment, row);
      return true;
    }
    return false;
  }

  private async run(environment: Environment, row: repo.ExportRow): Promise<void> {
    const db = this.db(environment);
    const principal = row.principal as TenantPrincipal;
    const log = this.deps.logger.child({ export_id: row.id, environment });
    const ttlMs = this.deps.limits.ttlHours * 3600_000;
    try {
      const total = await this.count(principal, row);
      await repo.recordProgress(db, row.id, row.attempts, { files_total: total.files, files_done: 0, bytes: 0 });
      const progress = throttledProgress((figures: { files_done: number; bytes: number }) => repo.recordProgress(db, row.id, row.attempts, figures), PROGRESS_EVERY_MS);
      const { zip, done, abort } = writeZip(
        this.deps.files,
        {
          exportId: row.id,
          createdAt: row.created_at.toISOString(),
          environment,
          principal,
          includeContent: row.include_content,
          includeVersions: row.include_versions,
          path: row.path ?? undefined,
          maxBytes: this.deps.limits.maxBytes,
        },
        progress.update,
      );
      this.stopRun = abort;
      const [stored, totals] = await Promise.all([this.deps.store[environment].put(zip), done]).finally(() => {
        this.stopRun = undefined;
      });
      await progress.flush();
      const expiresAt = new Date(Date.now() + ttlMs);
      if (!(await repo.markReady(db, row.id, row.attempts, { key: stored.key, size: stored.size, expiresAt, files: totals.files, bytes: totals.bytes }))) {
        log.warn('export finished by a run that no longer owns it; left to the current run');
        return;
      }
      log.info({ files: totals.files, bytes: totals.bytes, size: stored.size }, 'export ready');
      await this.mailLink(environment, row, expiresAt).catch((error) => log.error({ err: error }, 'export ready, but its mail could not be sent'));
    } catch (error) {
      // Left running: the next worker to lead requeues it (`recover`).
      if (error instanceof ExportStopped) return log.info('export interrupted by a stop; it runs again at the next start');
      const reason = error instanceof ExportFailure || error instanceof AppError ? error.message : 'the export failed on an internal error; request it again';
      if (!(error instanceof ExportFailure)) log.error({ err: error }, 'export failed');
      await repo.markFailed(db, row.id, row.attempts, reason, new Date(Date.now() + ttlMs));
    }
  }

  /** Files and current content bytes the export will hold (its files_total), before writing. */
  private async count(principal: TenantPrincipal, row: repo.ExportRow): Promise<{ files: number; bytes: number }> {
    let files = 0;
    let bytes = 0;
    let after: string | undefined;
    for (;;) {
      const page = await this.deps.files.scan(principal, { after, limit: 1000, pathPrefix: row.path ?? undefined });
      for (const file of page) {
        files++;
        bytes += file.size;
      }
      if (row.include_content && bytes > this.deps.limits.maxBytes) {
        throw new ExportFailure(`the export holds more than ${this.deps.limits.maxBytes} bytes, the limit of this installation; export a folder (path) at a time`);
      }
      const last = page[page.length - 1];
      if (page.length < 1000 || !last) return { files, bytes };
      after = last.id;
    }
  }

  private async mailLink(environment: Environment, row: repo.ExportRow, expiresAt: Date): Promise<void> {
    const token = this.tokens.sign(row.id, environment, expiresAt);
    const link = `${this.deps.publicUrl().replace(/\/$/, '')}/v1/exports/${row.id}/download?token=${token}`;
    await this.deps.mailer.send({
      to: row.email,
      subject: 'Your Bantu export is ready',
      text: `Your export ${row.id} is ready.\n\nDownload it (a zip) before ${expiresAt.toISOString()}:\n${link}\n\nThe link works once or many times until then, for whoever holds it: keep it private.\n`,
    });
  }

  /** Finished exports past their time become `expired` and their zips are deleted. */
  async sweep(): Promise<number> {
    let deleted = 0;
    for (const environment of ENVIRONMENTS) {
      const db = this.db(environment);
      await repo.expireDue(db);
      for (const archive of await repo.expiredArchives(db, 1000)) {
        await this.deps.store[environment].delete(archive.archive_key).catch((error: NodeJS.ErrnoException) => {
          if (error.code !== 'ENOENT') throw error;
        });
        await repo.clearArchive(db, archive.id);
        deleted++;
      }
    }
    if (deleted) this.deps.logger.info({ deleted }, 'exports sweep deleted expired zips');
    return deleted;
  }
}
