import { Type } from '@sinclair/typebox';
import { Value } from '@sinclair/typebox/value';
import { AppError, Errors } from '../../../core/errors.ts';
import { tenantPrincipalOf } from '../../../gateway/auth.ts';
import { type Route, route } from '../../../gateway/routes.ts';
import { type FilesExportSource, MAX_SCAN_PAGE } from '../domain/export-source.ts';
import type { FilesService } from '../domain/files.service.ts';
import { FileObject } from './files.schemas.ts';

/**
 * What other services reach of files over HTTP (distributed mode), beside the public routes:
 * never announced to the gateway, so never reachable from outside; served on the files
 * process's own port, which answers only signed requests.
 *
 * `POST /internal/files/:id/restore`: the backup's restore (FilesPort.restoreVersion). The
 * version to bring back is in the `X-Bantu-Version` header; its bytes are the body, sent only
 * when the files store lacks them: a bodiless request for bytes the store does not hold
 * answers 409 `content_missing`, and the caller sends them.
 */
const RestoredVersion = Type.Object({
  sha256: Type.String({ pattern: '^[0-9a-f]{64}$' }),
  size: Type.Integer({ minimum: 0 }),
  content_type: Type.String({ minLength: 1 }),
  name: Type.String({ minLength: 1 }),
  path: Type.String({ minLength: 1 }),
});

export const RESTORE_VERSION_HEADER = 'x-bantu-version';

export function filesInternalRoutes(files: FilesService, exportSource: FilesExportSource): Route[] {
  return [
    ...exportSourceRoutes(exportSource),
    route({
      method: 'POST',
      url: '/internal/files/:id/restore',
      at: 'root',
      body: 'stream',
      auth: ['account_key', 'application_key', 'user'],
      scope: 'files:write',
      schema: {
        hide: true,
        params: Type.Object({ id: Type.String() }),
        headers: Type.Object({ [RESTORE_VERSION_HEADER]: Type.String() }),
        response: { 200: FileObject },
      },
      handler: async (request) => {
        let version: unknown;
        try {
          version = JSON.parse(request.headers[RESTORE_VERSION_HEADER]);
        } catch {
          throw new AppError(Errors.validationFailed, `${RESTORE_VERSION_HEADER} is not JSON`);
        }
        if (!Value.Check(RestoredVersion, version)) throw new AppError(Errors.validationFailed, `${RESTORE_VERSION_HEADER} is not a version`);
        const withBytes = request.headers['content-length'] !== undefined ? request.headers['content-length'] !== '0' : request.headers['transfer-encoding'] !== undefined;
        return files.restoreVersion(tenantPrincipalOf(request), request.params.id, version, async () => {
          if (!withBytes) throw new AppError(Errors.contentMissing, `send the bytes of ${version.sha256}`);
          return request.raw;
        });
      },
    }),
  ];
}

const READERS = ['account_key', 'application_key', 'user'] as const;

const FileVersionRecord = Type.Object({
  version: Type.Integer(),
  name: Type.String(),
  path: Type.String(),
  size: Type.Integer(),
  sha256: Type.String(),
  content_type: Type.String(),
  created_at: Type.String(),
});

/**
 * The exports' reads (FilesExportPort) for an exports process (distributed mode): a keyset page
 * of files, the versions of a page of files, and the bytes a version records (checked as they
 * are served); with the caller's visibility.
 */
function exportSourceRoutes(source: FilesExportSource): Route[] {
  return [
    route({
      method: 'GET',
      url: '/internal/files/export/scan',
      at: 'root',
      auth: [...READERS],
      scope: 'files:read',
      schema: {
        hide: true,
        querystring: Type.Object({
          limit: Type.Integer({ minimum: 1, maximum: 1000 }),
          after: Type.Optional(Type.String({ maxLength: 100 })),
          path_prefix: Type.Optional(Type.String({ maxLength: 2048 })),
        }),
        response: { 200: Type.Object({ data: Type.Array(FileObject) }) },
      },
      handler: async (request) => {
        const { limit, after, path_prefix } = request.query;
        return { data: await source.scan(tenantPrincipalOf(request), { limit, after, pathPrefix: path_prefix }) };
      },
    }),
    route({
      // A read, but of a page of files: their ids go in the body, where a page of them fits.
      method: 'POST',
      url: '/internal/files/export/versions',
      at: 'root',
      auth: [...READERS],
      scope: 'files:read',
      schema: {
        hide: true,
        body: Type.Object({ file_ids: Type.Array(Type.String({ maxLength: 100 }), { maxItems: MAX_SCAN_PAGE }) }),
        response: { 200: Type.Object({ data: Type.Array(Type.Object({ file_id: Type.String(), versions: Type.Array(FileVersionRecord) })) }) },
      },
      handler: async (request) => {
        const found = await source.versions(tenantPrincipalOf(request), request.body.file_ids);
        return { data: [...found].map(([file_id, versions]) => ({ file_id, versions })) };
      },
    }),
    route({
      method: 'GET',
      url: '/internal/files/:id/export/blobs/:sha256',
      at: 'root',
      auth: [...READERS],
      scope: 'files:read',
      schema: { hide: true, params: Type.Object({ id: Type.String({ maxLength: 100 }), sha256: Type.String({ pattern: '^[0-9a-f]{64}$' }) }) },
      handler: async (request, reply) => {
        const stream = await source.openBlob(tenantPrincipalOf(request), request.params.id, request.params.sha256);
        return reply.header('content-type', 'application/octet-stream').send(stream);
      },
    }),
  ];
}
