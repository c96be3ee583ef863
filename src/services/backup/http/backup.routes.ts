import { Type } from '@sinclair/typebox';
import { FileObject } from '../../../core/schemas.ts';
import { tenantPrincipalOf } from '../../../gateway/auth.ts';
import { sendContent } from '../../../gateway/download.ts';
import { type Route, route } from '../../../gateway/routes.ts';
import type { BackupService } from '../domain/backup.service.ts';
import { BackupStatus, FileIdParams, RetentionPolicy, VersionPage, VersionParams, VersionsQuery } from './backup.schemas.ts';

const READERS = ['account_key', 'application_key', 'user'] as const;
const ADMINS = ['account_key', 'user'] as const;

export function backupRoutes(backup: BackupService): Route[] {
  return [
    route({
      method: 'GET',
      url: '/files/:id/versions',
      auth: [...READERS],
      scope: 'files:read',
      errors: [404],
      schema: {
        tags: ['backups'],
        summary: "A file's backed-up history, oldest first",
        description: 'Every version the backup holds, deletes included (event File_delete). Deleted files keep their history.',
        params: FileIdParams,
        querystring: VersionsQuery,
        response: { 200: VersionPage },
      },
      handler: async (request) => backup.listVersions(tenantPrincipalOf(request), request.params.id, request.query),
    }),

    route({
      method: 'GET',
      url: '/files/:id/versions/:version/content',
      auth: [...READERS],
      scope: 'files:read',
      errors: [404, 416],
      schema: {
        tags: ['backups'],
        summary: "One version's bytes, from the backup store",
        description: 'ETag is "<sha256>". Supports Range (206; 416 when unsatisfiable), If-None-Match (304) and If-Range.',
        params: VersionParams,
        // The bytes go out as a stream: nothing is serialized; this keeps the 200 documented.
        response: { 200: Type.Null() },
      },
      handler: async (request, reply) => {
        const principal = tenantPrincipalOf(request);
        const entry = await backup.findVersion(principal, request.params.id, request.params.version);
        return sendContent(
          request,
          reply,
          {
            sha256: entry.sha256,
            size: entry.size,
            name: entry.name,
            contentType: entry.content_type,
            lastModified: entry.created_at,
            // A version never changes: its bytes may be cached as long as the client likes.
            cacheControl: 'private, max-age=31536000, immutable',
          },
          (range) => backup.openVersion(principal, entry, range),
        );
      },
    }),

    route({
      method: 'POST',
      url: '/files/:id/versions/:version/restore',
      auth: [...READERS],
      scope: 'files:write',
      errors: [404, 409],
      schema: {
        tags: ['backups'],
        summary: 'Make a backed-up version current again',
        description: 'Makes a NEW version equal to that one (name, folder, content). A deleted file comes back under the same id. 409 file_exists when its name is taken by another file.',
        params: VersionParams,
        response: { 200: FileObject },
      },
      handler: async (request) => backup.restore(tenantPrincipalOf(request), request.params.id, request.params.version),
    }),

    route({
      method: 'GET',
      url: '/backups/status',
      auth: [...ADMINS],
      schema: {
        tags: ['backups'],
        summary: 'Backup state of this tenant and environment (account key or admin)',
        description:
          "pending_events and dead_letters count this tenant's file events in this environment only: those not yet backed up, and those " +
          'set aside after their tries (a poison event: its bytes missing or not the bytes it names). Other tenants are never counted.',
        response: { 200: BackupStatus },
      },
      handler: async (request) => backup.status(tenantPrincipalOf(request)),
    }),

    route({
      method: 'GET',
      url: '/backups/policy',
      auth: [...ADMINS],
      schema: { tags: ['backups'], summary: 'The retention policy (account key or admin)', response: { 200: RetentionPolicy } },
      handler: async (request) => backup.getPolicy(tenantPrincipalOf(request)),
    }),

    route({
      method: 'PUT',
      url: '/backups/policy',
      auth: ['account_key'],
      schema: {
        tags: ['backups'],
        summary: 'Set the retention policy (account key)',
        description:
          '`{keep: "all"}` (the default), `{keep_last: N}` versions per file, or `{keep_days: D}`. Enforced by a periodic sweep that never removes ' +
          "a file's current version, nor a deleted file's last one.",
        body: RetentionPolicy,
        response: { 200: RetentionPolicy },
      },
      handler: async (request) => backup.setPolicy(tenantPrincipalOf(request), request.body),
    }),
  ];
}
