import type { FilesExportPort } from '../../../core/ports.ts';
import { tenantPrincipalOf } from '../../../gateway/auth.ts';
import { type Route, route } from '../../../gateway/routes.ts';
import { type LiveFormat, openLiveExport } from '../domain/live-export.ts';
import { LiveExportHeaders, LiveExportQuery, LiveExportResponse } from './exports.schemas.ts';

const READERS = ['account_key', 'application_key', 'user'] as const;

const VISIBILITY =
  'Visibility: a user token exports only its own files; an account key, an admin user, or an application key with the `files:read` scope ' +
  'exports every file of the tenant and environment. Never another tenant\'s or environment\'s.';

/** NDJSON when the Accept header asks for it (and does not refuse it with q=0); JSON otherwise. */
export function liveFormatOf(accept: string | undefined): LiveFormat {
  for (const part of (accept ?? '').split(',')) {
    const [type = '', ...params] = part.split(';').map((s) => s.trim().toLowerCase());
    if (type !== 'application/x-ndjson') continue;
    const q = params.find((p) => p.startsWith('q='));
    return q && Number(q.slice(2)) === 0 ? 'json' : 'ndjson';
  }
  return 'json';
}

export function exportsRoutes(deps: { files: FilesExportPort }): Route[] {
  return [
    route({
      method: 'GET',
      url: '/exports/files',
      auth: [...READERS],
      scope: 'files:read',
      schema: {
        tags: ['exports'],
        summary: 'Export the visible File objects now, streamed',
        description:
          'A JSON array of File objects, oldest first, or with `Accept: application/x-ndjson` one File object per line. ' +
          'Streamed from a cursor over the files, in constant memory for any number of files. ' +
          VISIBILITY,
        querystring: LiveExportQuery,
        headers: LiveExportHeaders,
        response: { 200: LiveExportResponse },
      },
      handler: async (request, reply) => {
        const format = liveFormatOf(request.headers.accept);
        const stream = await openLiveExport(deps.files, tenantPrincipalOf(request), { format, path: request.query.path });
        stream.on('error', (error) => request.log.warn({ err: error }, 'live export failed mid-stream; the response is cut short'));
        return reply
          .header('content-type', format === 'ndjson' ? 'application/x-ndjson; charset=utf-8' : 'application/json; charset=utf-8')
          .header('cache-control', 'no-store')
          .send(stream);
      },
    }),
  ];
}
