import { Readable } from 'node:stream';
import type { TenantPrincipal } from '../../../core/principal.ts';
import type { FileObject } from '../../../core/schemas.ts';
import type { BlobRef, FilesExportPort, FileVersionRecord, FoundBlob } from '../../../core/service-ports.ts';
import { problemError, type ServiceClient } from '../../../platform/service-client.ts';
import { MAX_SCAN_PAGE } from '../domain/export-source.ts';

/**
 * The exports' reads of files over HTTP (distributed mode): the files process's internal
 * export routes, on behalf of the caller's principal, so files applies its own visibility.
 */
export class HttpFilesExportPort implements FilesExportPort {
  constructor(private readonly client: ServiceClient) {}

  async scan(principal: TenantPrincipal, query: { after?: string; limit: number; pathPrefix?: string }): Promise<FileObject[]> {
    const params = new URLSearchParams({ limit: String(query.limit) });
    if (query.after !== undefined) params.set('after', query.after);
    if (query.pathPrefix !== undefined) params.set('path_prefix', query.pathPrefix);
    const page = await this.client.json<{ data: FileObject[] }>('files', { method: 'GET', path: `/internal/files/export/scan?${params}`, principal });
    return page.data;
  }

  async versions(principal: TenantPrincipal, fileIds: readonly string[]): Promise<Map<string, FileVersionRecord[]>> {
    const found = new Map<string, FileVersionRecord[]>();
    for (let start = 0; start < fileIds.length; start += MAX_SCAN_PAGE) {
      const body = JSON.stringify({ file_ids: fileIds.slice(start, start + MAX_SCAN_PAGE) });
      const answer = await this.client.json<{ data: Array<{ file_id: string; versions: FileVersionRecord[] }> }>('files', {
        method: 'POST',
        path: '/internal/files/export/versions',
        principal,
        headers: { 'content-type': 'application/json', 'content-length': String(Buffer.byteLength(body)) },
        body: Readable.from([Buffer.from(body)]),
      });
      for (const { file_id, versions } of answer.data) found.set(file_id, versions);
    }
    return found;
  }

  /**
   * Each blob is checked by the files process as it serves it (a request per blob either way):
   * checking them first as well would add a look-up, not save one.
   */
  async findBlobs(principal: TenantPrincipal, refs: readonly BlobRef[]): Promise<Array<FoundBlob | null>> {
    return refs.map((ref) => ({ open: () => this.openBlob(principal, ref) }));
  }

  private async openBlob(principal: TenantPrincipal, ref: BlobRef): Promise<AsyncIterable<Uint8Array>> {
    const answer = await this.client.call('files', { method: 'GET', path: `/internal/files/${encodeURIComponent(ref.fileId)}/export/blobs/${ref.sha256}`, principal });
    if (answer.statusCode !== 200) throw await problemError(answer);
    return answer.body;
  }
}
