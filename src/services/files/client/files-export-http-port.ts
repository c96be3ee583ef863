import type { FilesExportPort, FileVersionRecord } from '../../../core/ports.ts';
import type { TenantPrincipal } from '../../../core/principal.ts';
import type { FileObject } from '../../../core/schemas.ts';
import { problemError, type ServiceClient } from '../../../platform/service-client.ts';

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

  async versions(principal: TenantPrincipal, fileId: string): Promise<FileVersionRecord[]> {
    const answer = await this.client.json<{ data: FileVersionRecord[] }>('files', { method: 'GET', path: `/internal/files/${encodeURIComponent(fileId)}/export/versions`, principal });
    return answer.data;
  }

  async openBlob(principal: TenantPrincipal, fileId: string, sha256: string): Promise<AsyncIterable<Uint8Array>> {
    const answer = await this.client.call('files', { method: 'GET', path: `/internal/files/${encodeURIComponent(fileId)}/export/blobs/${sha256}`, principal });
    if (answer.statusCode !== 200) throw await problemError(answer);
    return answer.body;
  }
}
