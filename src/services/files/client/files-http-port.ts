import { Readable } from 'node:stream';
import { AppError } from '../../../core/errors.ts';
import type { TenantPrincipal } from '../../../core/principal.ts';
import type { FileObject } from '../../../core/schemas.ts';
import type { FilesPort, RestorableVersion } from '../../../core/service-ports.ts';
import { problemError, type ServiceClient } from '../../../platform/service-client.ts';
import { RESTORE_VERSION_HEADER } from '../http/files.internal-routes.ts';

/**
 * The files port over HTTP (distributed mode): what the backup process reaches of files
 * without mounting the files domain or touching its tables. Reads and deletes go through the
 * public routes, on behalf of the caller's principal; a restore through the internal route,
 * first without the bytes (the files store usually holds them: content addressed), then, on
 * `content_missing`, with them.
 */
export class HttpFilesPort implements FilesPort {
  constructor(private readonly client: ServiceClient) {}

  get(principal: TenantPrincipal, id: string): Promise<FileObject> {
    return this.client.json('files', { method: 'GET', path: `/v1/files/${encodeURIComponent(id)}`, principal });
  }

  list(principal: TenantPrincipal, query: { limit: number; cursor?: string }): Promise<{ data: FileObject[]; next_cursor: string | null }> {
    const params = new URLSearchParams({ limit: String(query.limit) });
    if (query.cursor) params.set('cursor', query.cursor);
    return this.client.json('files', { method: 'GET', path: `/v1/files?${params}`, principal });
  }

  async remove(principal: TenantPrincipal, id: string): Promise<void> {
    await this.client.json('files', { method: 'DELETE', path: `/v1/files/${encodeURIComponent(id)}`, principal });
  }

  async restoreVersion(
    principal: TenantPrincipal,
    id: string,
    version: RestorableVersion,
    open: () => Promise<AsyncIterable<Uint8Array>>,
  ): Promise<FileObject> {
    const path = `/internal/files/${encodeURIComponent(id)}/restore`;
    const headers = { [RESTORE_VERSION_HEADER]: JSON.stringify(version) };
    try {
      return await this.client.json<FileObject>('files', { method: 'POST', path, principal, headers: { ...headers, 'content-length': '0' } });
    } catch (error) {
      if (!(error instanceof AppError && error.code === 'content_missing')) throw error;
    }
    const body = Readable.from(await open());
    let answer: Awaited<ReturnType<ServiceClient['call']>>;
    try {
      answer = await this.client.call('files', {
        method: 'POST',
        path,
        principal,
        headers: { ...headers, 'content-type': 'application/octet-stream', 'content-length': String(version.size) },
        body,
      });
    } catch (error) {
      body.destroy(); // the backup store's stream, never read
      throw error;
    }
    if (answer.statusCode === 200) return (await answer.body.json()) as FileObject;
    throw await problemError(answer);
  }
}
