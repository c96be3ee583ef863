import type { RawBuilder } from 'kysely';
import { type Databases, tenantRead } from '../../../adapters/db/pg.ts';
import { AppError, Errors } from '../../../core/errors.ts';
import type { BlobStore } from '../../../core/ports.ts';
import type { Environment, TenantPrincipal } from '../../../core/principal.ts';
import type { FileObject } from '../../../core/schemas.ts';
import type { BlobRef, FilesExportPort, FileVersionRecord, FoundBlob } from '../../../core/service-ports.ts';
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

  async versions(principal: TenantPrincipal, fileIds: readonly string[]): Promise<Map<string, FileVersionRecord[]>> {
    const found = new Map<string, FileVersionRecord[]>();
    if (fileIds.length === 0) return found;
    const rows = await this.read(principal, repo.fileVersionsSelect(principal.tenantId, fileIds, ownerScope(principal)));
    for (const { file_id, ...row } of rows) {
      const versions = found.get(file_id);
      const record = { ...row, created_at: row.created_at.toISOString() };
      if (versions) versions.push(record);
      else found.set(file_id, [record]);
    }
    return found;
  }

  async findBlobs(principal: TenantPrincipal, refs: readonly BlobRef[]): Promise<Array<FoundBlob | null>> {
    if (refs.length === 0) return [];
    const rows = await this.read(principal, repo.versionBlobsSelect(principal.tenantId, refs, ownerScope(principal)));
    const recorded = new Set(rows.map((row) => `${row.file_id}/${row.sha256}`));
    const store = this.deps.blobs[principal.environment];
    return refs.map((ref) => (recorded.has(`${ref.fileId}/${ref.sha256}`) ? { open: () => store.get(ref.sha256) } : null));
  }

  /** One blob (the internal route of an exports process, whose HttpFilesExportPort opens blobs one at a time). */
  async openBlob(principal: TenantPrincipal, fileId: string, sha256: string): Promise<AsyncIterable<Uint8Array>> {
    const [found] = await this.findBlobs(principal, [{ fileId, sha256 }]);
    if (!found) throw new AppError(Errors.notFound, `No version of file ${fileId} holds ${sha256}`);
    return found.open();
  }
}
