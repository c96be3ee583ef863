import type { RawBuilder } from 'kysely';
import { type Databases, tenantRead } from '../../../adapters/db/pg.ts';
import { AppError, Errors } from '../../../core/errors.ts';
import type { BlobStore, FilesExportPort, FileVersionRecord } from '../../../core/ports.ts';
import type { Environment, TenantPrincipal } from '../../../core/principal.ts';
import type { FileObject } from '../../../core/schemas.ts';
import * as repo from '../repo/files.repo.ts';
import { ownerScope, toFileObject } from './files.service.ts';
import { normalizePath } from './names.ts';

/** The largest page `scan` answers, whatever is asked: one page is what an export holds. */
export const MAX_SCAN_PAGE = 1000;

/**
 * The files side of exports (FilesExportPort, in-process): keyset pages of the visible files,
 * their recorded versions, and the bytes those versions name, with the files list's visibility.
 */
export class FilesExportSource implements FilesExportPort {
  constructor(private readonly deps: { databases: Databases; blobs: Record<Environment, BlobStore> }) {}

  private read<Row>(principal: TenantPrincipal, statement: RawBuilder<Row>): Promise<Row[]> {
    return tenantRead(this.deps.databases.environments[principal.environment], principal.tenantId, statement);
  }

  async scan(principal: TenantPrincipal, query: { after?: string; limit: number; pathPrefix?: string }): Promise<FileObject[]> {
    const pathPrefix = query.pathPrefix === undefined ? undefined : normalizePath(query.pathPrefix);
    const limit = Math.max(1, Math.min(MAX_SCAN_PAGE, Math.floor(query.limit)));
    const rows = await this.read(principal, repo.filesScanSelect(principal.tenantId, { owner: ownerScope(principal), pathPrefix, after: query.after, limit }));
    return rows.map(toFileObject);
  }

  async versions(principal: TenantPrincipal, fileId: string): Promise<FileVersionRecord[]> {
    const rows = await this.read(principal, repo.fileVersionsSelect(principal.tenantId, fileId, ownerScope(principal)));
    if (rows.length === 0) throw new AppError(Errors.notFound, `No file ${fileId}`);
    return rows.map((row) => ({ ...row, created_at: row.created_at.toISOString() }));
  }

  async openBlob(principal: TenantPrincipal, fileId: string, sha256: string): Promise<AsyncIterable<Uint8Array>> {
    const found = await this.read(principal, repo.versionBlobSelect(principal.tenantId, fileId, ownerScope(principal), sha256));
    if (found.length === 0) throw new AppError(Errors.notFound, `No version of file ${fileId} holds ${sha256}`);
    return this.deps.blobs[principal.environment].get(sha256);
  }
}
