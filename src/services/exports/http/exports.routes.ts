import { Type } from '@sinclair/typebox';
import { ListQuery, Page } from '../../../core/pagination.ts';
import type { FilesExportPort } from '../../../core/service-ports.ts';
import { principalOf, tenantPrincipalOf } from '../../../gateway/auth.ts';
import { sendContent } from '../../../gateway/download.ts';
import { type Route, route } from '../../../gateway/routes.ts';
import type { ExportsService } from '../domain/exports.service.ts';
import { type LiveFormat, openLiveExport } from '../domain/live-export.ts';
import {
  CreatedExport,
  CreateExportBody,
  DownloadQuery,
  ExportObject,
  ExportParams,
  LiveExportHeaders,
  LiveExportQuery,
  LiveExportResponse,
} from './exports.schemas.ts';

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

export function exportsRoutes(deps: { files: FilesExportPort; exports: ExportsService }): Route[] {
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

    route({
      method: 'POST',
      url: '/exports',
      auth: [...READERS],
      scope: 'files:read',
      errors: [429],
      absentBody: {},
      schema: {
        tags: ['exports'],
        summary: 'Start a zip export (a background job)',
        description:
          'Builds one zip with `manifest.json` and the files (and every version when asked), checked against their sha256 as written. ' +
          'A restart of the server resumes or retries it. When ready, a mail carries a signed download link valid for BANTU_EXPORTS_TTL_HOURS (24 h): ' +
          "to the user, or to `email` (required with a key). At most BANTU_EXPORTS_MAX_RUNNING pending or running per tenant: 429 rate_limited beyond. " +
          VISIBILITY,
        body: CreateExportBody,
        response: { 202: CreatedExport },
      },
      handler: async (request, reply) => {
        const view = await deps.exports.create(tenantPrincipalOf(request), request.body, { ip: request.ip });
        return reply.code(202).header('location', `/v1/exports/${view.id}`).send({ id: view.id, status: 'pending', created_at: view.created_at });
      },
    }),

    route({
      method: 'GET',
      url: '/exports',
      auth: [...READERS],
      scope: 'files:read',
      schema: { tags: ['exports'], summary: 'The exports you made, newest first', querystring: ListQuery, response: { 200: Page(ExportObject) } },
      handler: async (request) => deps.exports.list(tenantPrincipalOf(request), request.query),
    }),

    route({
      method: 'GET',
      url: '/exports/:id',
      auth: [...READERS],
      scope: 'files:read',
      errors: [404],
      schema: { tags: ['exports'], summary: "An export's status and progress", description: "Another caller's export answers 404.", params: ExportParams, response: { 200: ExportObject } },
      handler: async (request) => deps.exports.get(tenantPrincipalOf(request), request.params.id),
    }),

    route({
      method: 'GET',
      url: '/exports/:id/download',
      auth: [...READERS],
      scope: 'files:read',
      credentialsOptional: true,
      errors: [404, 416],
      schema: {
        tags: ['exports'],
        summary: 'Download a ready export (application/zip)',
        description:
          'With the mailed `?token=` (no credentials needed), or with the credentials that created the export. Supports Range (206) and If-Range. ' +
          "A forged, expired or other export's token, another caller's export, or one not ready: 404.",
        params: ExportParams,
        querystring: DownloadQuery,
        response: { 200: Type.Null() },
      },
      handler: async (request, reply) => {
        const token = request.query.token;
        const principal = token === undefined ? tenantPrincipalOf(request) : request.principal ? principalOf(request) : null;
        const download = await deps.exports.download({ principal: principal?.kind === 'operator' ? null : principal, token, ip: request.ip }, request.params.id);
        return sendContent(
          request,
          reply,
          {
            sha256: download.sha256,
            size: download.size,
            name: download.name,
            contentType: 'application/zip',
            lastModified: download.completedAt,
            cacheControl: 'private, no-store',
          },
          download.open,
        );
      },
    }),
  ];
}
