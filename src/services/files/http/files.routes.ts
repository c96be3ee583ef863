import { Type } from '@sinclair/typebox';
import type { FastifyReply } from 'fastify';
import { Errors, fail } from '../../../core/errors.ts';
import { isTenantAdmin } from '../../../core/principal.ts';
import { tenantPrincipalOf } from '../../../gateway/auth.ts';
import { sendContent } from '../../../gateway/download.ts';
import { type Route, route } from '../../../gateway/routes.ts';
import type { FilesService } from '../domain/files.service.ts';
import type { WriteAnswer } from '../domain/idempotency.ts';
import { FileUploads } from '../domain/uploads.ts';
import {
  DownloadResponse,
  FileObject,
  FilePage,
  FileParams,
  ListFilesQuery,
  PatchFileBody,
  ReplaceHeaders,
  UploadHeaders,
  UploadQuery,
  Usage,
} from './files.schemas.ts';
import { uploadBodyOf } from './upload-body.ts';

const READERS = ['account_key', 'application_key', 'user'] as const;

/**
 * Who reaches which file, stated on every files route. Application keys act for a client app,
 * not for a user, so within their scopes they reach the tenant's files as an account key does.
 */
const VISIBILITY =
  'Visibility: a user token reaches only its own files; an account key, an admin user, or an application key with the `files:read` / `files:write` scope ' +
  '(a client app acting without a user) reaches every file of the tenant and environment. Any other file answers 404.';

/** How an upload can fail on its body, for the OpenAPI description of both upload routes. */
const UPLOAD_ERRORS =
  'A body that cannot be parsed (no or wrong multipart boundary, cut short, bad JSON field, a field named `__proto__`) is 400 `malformed_body`; ' +
  'a body over the upload limit or the tenant quota is 413 (`payload_too_large`, `quota_exceeded`), as are more than 20 parts; ' +
  'no `file` part, two of them, an unknown field or one over 4,096 bytes is 422 `validation_failed` with `errors[]`. Nothing of a refused upload is kept. ' +
  'An answer given before the body has been read (by its Content-Length, its credentials, the file it names) carries `Connection: close`; ' +
  'the server reads and discards the rest of the body for up to 5 s or 64 MiB first, so that clients still sending get to read it. ';

/** The form fields an upload takes besides its `file` part. */
const CREATE_FIELDS = ['name', 'path', 'owner_id'] as const;

function sendAnswer(reply: FastifyReply, answer: WriteAnswer) {
  if (answer.replayed) reply.header('idempotent-replayed', 'true');
  return reply.code(answer.status).send(answer.file);
}

export function filesRoutes(files: FilesService): Route[] {
  const uploads = new FileUploads(files);
  return [
    route({
      method: 'POST',
      url: '/files',
      auth: [...READERS],
      scope: 'files:write',
      body: 'stream',
      errors: [400, 409, 413],
      schema: {
        tags: ['files'],
        summary: 'Upload a file',
        description:
          'multipart/form-data with a part `file` (and optional fields `path`, `name`, `owner_id`), or a raw body with its Content-Type and `?name=&path=`. ' +
          'The content is streamed to storage while it is hashed. Optional Idempotency-Key: a retry replays the first answer and stores nothing twice. ' +
          'A name already taken in the folder is 409 `file_exists`: before the body is read when it declares 64 KiB or more (or no length); ' +
          'a smaller body, which arrives with the request, is read first, and its bytes (never counted in usage) go with the next files sweep, within about 70 minutes. ' +
          UPLOAD_ERRORS +
          VISIBILITY,
        querystring: UploadQuery,
        headers: UploadHeaders,
        response: { 201: FileObject },
      },
      handler: async (request, reply) => {
        const answer = await uploads.createFromUpload(tenantPrincipalOf(request), {
          ...uploadBodyOf(request, CREATE_FIELDS),
          idempotencyKey: request.headers['idempotency-key'],
          fields: request.query,
        });
        return sendAnswer(reply, answer);
      },
    }),

    route({
      method: 'PUT',
      url: '/files/:id/content',
      auth: [...READERS],
      scope: 'files:write',
      body: 'stream',
      errors: [400, 404, 409, 412, 413],
      schema: {
        tags: ['files'],
        summary: 'Replace the content (a new version)',
        description:
          'Raw body or multipart part `file`. `If-Match: "<sha256>"` makes it conditional: when the content changed since, 412 version_conflict. ' +
          'Without If-Match, concurrent replaces each make their own version; none is lost. A multipart replace takes no other field. ' +
          UPLOAD_ERRORS +
          VISIBILITY,
        params: FileParams,
        headers: ReplaceHeaders,
        response: { 200: FileObject },
      },
      handler: async (request, reply) => {
        const answer = await uploads.replaceFromUpload(tenantPrincipalOf(request), request.params.id, {
          ...uploadBodyOf(request, []),
          idempotencyKey: request.headers['idempotency-key'],
          ifMatch: request.headers['if-match'],
        });
        return sendAnswer(reply, answer);
      },
    }),

    route({
      method: 'GET',
      url: '/files',
      auth: [...READERS],
      scope: 'files:read',
      schema: { tags: ['files'], summary: 'List files, newest first', description: VISIBILITY, querystring: ListFilesQuery, response: { 200: FilePage } },
      handler: async (request) => files.list(tenantPrincipalOf(request), request.query),
    }),

    route({
      method: 'GET',
      url: '/files/:id',
      auth: [...READERS],
      scope: 'files:read',
      errors: [404],
      schema: { tags: ['files'], summary: "A file's metadata", description: VISIBILITY, params: FileParams, response: { 200: FileObject } },
      handler: async (request) => files.get(tenantPrincipalOf(request), request.params.id),
    }),

    route({
      method: 'GET',
      url: '/files/:id/content',
      auth: [...READERS],
      scope: 'files:read',
      errors: [404, 416],
      schema: {
        tags: ['files'],
        summary: 'Download the content',
        description: `ETag is "<sha256>". Supports Range (206; 416 when unsatisfiable), If-None-Match (304) and If-Range. ${VISIBILITY}`,
        params: FileParams,
        response: { 200: DownloadResponse },
      },
      handler: async (request, reply) => {
        const principal = tenantPrincipalOf(request);
        const file = await files.get(principal, request.params.id);
        return sendContent(
          request,
          reply,
          { sha256: file.sha256, size: file.size, name: file.name, contentType: file.content_type, lastModified: file.updated_at, cacheControl: 'private, no-cache' },
          (range) => files.openContent(principal, file, range),
        );
      },
    }),

    route({
      method: 'PATCH',
      url: '/files/:id',
      auth: [...READERS],
      scope: 'files:write',
      errors: [404, 409],
      schema: {
        tags: ['files'],
        summary: 'Rename or move a file',
        description: `Makes a new version (same content, new name or folder). ${VISIBILITY}`,
        params: FileParams,
        body: PatchFileBody,
        response: { 200: FileObject },
      },
      handler: async (request) => files.update(tenantPrincipalOf(request), request.params.id, request.body),
    }),

    route({
      method: 'DELETE',
      url: '/files/:id',
      auth: [...READERS],
      scope: 'files:write',
      errors: [404],
      schema: {
        tags: ['files'],
        summary: 'Delete a file (its history stays in the backups)',
        description: VISIBILITY,
        params: FileParams,
        response: { 204: Type.Null() },
      },
      handler: async (request, reply) => {
        await files.remove(tenantPrincipalOf(request), request.params.id);
        return reply.code(204).send();
      },
    }),

    route({
      method: 'GET',
      url: '/usage',
      auth: ['account_key', 'user'],
      schema: { tags: ['files'], summary: 'Storage use of the tenant in this environment (account key or admin)', response: { 200: Usage } },
      handler: async (request) => {
        const principal = tenantPrincipalOf(request);
        if (!isTenantAdmin(principal)) fail(Errors.forbidden, 'Usage is for account keys and admin users');
        return files.usage(principal);
      },
    }),
  ];
}
