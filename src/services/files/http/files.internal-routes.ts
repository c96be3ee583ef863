import { Type } from '@sinclair/typebox';
import { Value } from '@sinclair/typebox/value';
import { AppError, Errors } from '../../../core/errors.ts';
import { tenantPrincipalOf } from '../../../gateway/auth.ts';
import { type Route, route } from '../../../gateway/routes.ts';
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

export function filesInternalRoutes(files: FilesService): Route[] {
  return [
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
