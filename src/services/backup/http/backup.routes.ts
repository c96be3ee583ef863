import type { FastifyInstance, FastifyRequest } from 'fastify';
import { AppError, Errors, fail } from '../../../core/errors.ts';
import { principalOf } from '../../../gateway/auth.ts';
// The same HTTP download rules as GET /v1/files/{id}/content (Range, If-None-Match, filename).
import { contentDisposition, noneMatch, parseRange } from '../../files/http/download.ts';
import { FileObject } from '../../files/http/files.schemas.ts';
import type { BackupPrincipal, BackupService, RetentionPolicy as Policy } from '../domain/backup.service.ts';
import { BackupStatus, FileIdParams, RetentionPolicy, VersionPage, VersionParams, VersionsQuery } from './backup.schemas.ts';

const READERS = ['account_key', 'application_key', 'user'] as const;
const ADMINS = ['account_key', 'user'] as const;
const problem = { description: 'problem+json', type: 'object', additionalProperties: true } as const;

function backupPrincipal(request: FastifyRequest): BackupPrincipal {
  const principal = principalOf(request);
  if (principal.kind === 'operator') fail(Errors.forbidden, 'The operator token does not own files');
  return principal;
}

export function backupRoutes(backup: BackupService) {
  return async (app: FastifyInstance) => {
    app.get(
      '/files/:id/versions',
      {
        config: { auth: [...READERS], scope: 'files:read' },
        schema: {
          tags: ['backups'],
          summary: "A file's backed-up history, oldest first",
          description: 'Every version the backup holds, deletes included (event File_delete). Deleted files keep their history.',
          params: FileIdParams,
          querystring: VersionsQuery,
          response: { 200: VersionPage, 404: problem },
        },
      },
      async (request) => {
        const { id } = request.params as { id: string };
        return backup.listVersions(backupPrincipal(request), id, request.query as { limit: number; cursor?: string });
      },
    );

    app.get(
      '/files/:id/versions/:version/content',
      {
        config: { auth: [...READERS], scope: 'files:read' },
        schema: {
          tags: ['backups'],
          summary: "One version's bytes, from the backup store",
          description: 'ETag is "<sha256>". Supports Range (206; 416 when unsatisfiable), If-None-Match (304) and If-Range.',
          params: VersionParams,
        },
      },
      async (request, reply) => {
        const principal = backupPrincipal(request);
        const { id, version } = request.params as { id: string; version: number };
        const entry = await backup.findVersion(principal, id, version);
        const etag = `"${entry.sha256}"`;
        reply.headers({
          etag,
          'last-modified': new Date(entry.created_at).toUTCString(),
          // A version never changes: its bytes may be cached as long as the client likes.
          'cache-control': 'private, max-age=31536000, immutable',
          'accept-ranges': 'bytes',
          'x-content-type-options': 'nosniff',
        });
        if (noneMatch(request.headers['if-none-match'], etag)) return reply.code(304).send();
        const ifRange = request.headers['if-range'];
        const range = ifRange && ifRange !== etag ? null : parseRange(request.headers.range, entry.size);
        if (range === 'unsatisfiable') {
          reply.header('content-range', `bytes */${entry.size}`);
          throw new AppError(Errors.rangeNotSatisfiable, `The version has ${entry.size} bytes`);
        }
        const stream = await backup.openVersion(principal, entry, range ?? undefined);
        reply.headers({ 'content-type': entry.content_type, 'content-disposition': contentDisposition(entry.name) });
        if (range) {
          reply.code(206).headers({ 'content-range': `bytes ${range.start}-${range.end}/${entry.size}`, 'content-length': range.end - range.start + 1 });
        } else {
          reply.header('content-length', entry.size);
        }
        return reply.send(stream);
      },
    );

    app.post(
      '/files/:id/versions/:version/restore',
      {
        config: { auth: [...READERS], scope: 'files:write' },
        schema: {
          tags: ['backups'],
          summary: 'Make a backed-up version current again',
          description: 'Makes a NEW version equal to that one (name, folder, content). A deleted file comes back under the same id. 409 file_exists when its name is taken by another file.',
          params: VersionParams,
          response: { 200: FileObject, 404: problem, 409: problem },
        },
      },
      async (request) => {
        const { id, version } = request.params as { id: string; version: number };
        return backup.restore(backupPrincipal(request), id, version);
      },
    );

    app.get(
      '/backups/status',
      {
        config: { auth: [...ADMINS] },
        schema: {
          tags: ['backups'],
          summary: 'Backup state of this tenant and environment (account key or admin)',
          description:
            "pending_events and dead_letters count this tenant's file events in this environment only: those not yet backed up, and those " +
            'set aside after their tries (a poison event: its bytes missing or not the bytes it names). Other tenants are never counted.',
          response: { 200: BackupStatus },
        },
      },
      async (request) => backup.status(backupPrincipal(request)),
    );

    app.get(
      '/backups/policy',
      {
        config: { auth: [...ADMINS] },
        schema: { tags: ['backups'], summary: 'The retention policy (account key or admin)', response: { 200: RetentionPolicy } },
      },
      async (request) => backup.getPolicy(backupPrincipal(request)),
    );

    app.put(
      '/backups/policy',
      {
        config: { auth: ['account_key'] },
        schema: {
          tags: ['backups'],
          summary: 'Set the retention policy (account key)',
          description:
            '`{keep: "all"}` (the default), `{keep_last: N}` versions per file, or `{keep_days: D}`. Enforced by a periodic sweep that never removes ' +
            "a file's current version, nor a deleted file's last one.",
          body: RetentionPolicy,
          response: { 200: RetentionPolicy },
        },
      },
      async (request) => backup.setPolicy(backupPrincipal(request), request.body as Policy),
    );
  };
}
