import { createHash } from 'node:crypto';
import type { IncomingMessage } from 'node:http';
import type { Readable } from 'node:stream';
import multipart, { type Multipart } from '@fastify/multipart';
import { Type } from '@sinclair/typebox';
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import { AppError, Errors, fail } from '../../../core/errors.ts';
import type { StagedBlob, StoredBlob } from '../../../core/ports.ts';
import { isTenantAdmin, type TenantPrincipal } from '../../../core/principal.ts';
import { principalOf } from '../../../gateway/auth.ts';
import { contentDisposition, noneMatch, parseRange } from '../../../gateway/download.ts';
import type { FilesService } from '../domain/files.service.ts';
import { type Idempotency, principalKey, replayOf, type WriteAnswer } from '../domain/idempotency.ts';
import { normalizePath, validateName } from '../domain/names.ts';
import { FileObject, FilePage, FileParams, ListFilesQuery, PatchFileBody, ReplaceHeaders, UploadHeaders, UploadQuery, Usage } from './files.schemas.ts';

const READERS = ['account_key', 'application_key', 'user'] as const;
/** Multipart framing and form fields around the content: a Content-Length beyond limit + this is refused unread. */
const MULTIPART_SLACK = 1024 * 1024;

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
  'the server reads and discards the rest of the body for up to 5 s or 64 MiB first, so that clients still sending get to read it. '

const problem = { description: 'problem+json', type: 'object', additionalProperties: true } as const;

function filesPrincipal(request: FastifyRequest): TenantPrincipal {
  const principal = principalOf(request);
  if (principal.kind === 'operator') fail(Errors.forbidden, 'The operator token does not own files');
  return principal;
}

function declaredLength(request: FastifyRequest): number | undefined {
  const header = request.headers['content-length'];
  return header === undefined ? undefined : Number(header);
}

/** The form fields an upload takes besides its `file` part. */
const CREATE_FIELDS = ['name', 'path', 'owner_id'] as const;

/** What an upload's content became: a blob staged in the store, or only its hash (a replay). */
type Content = StagedBlob | { sha256: string; size: number };

/** The content of an upload, and the form fields that came with it (multipart), once all are read. */
interface Received {
  blob: StoredBlob | { sha256: string; size: number };
  contentType: string | undefined;
  fields: Record<string, string>;
  filename?: string;
}

type Consume = (content: AsyncIterable<Uint8Array>, early: { fields: Record<string, string>; filename?: string }) => Promise<Content>;

/**
 * No fileSize limit: busboy would silently truncate at it. The blob store enforces the upload
 * limit itself, failing the upload (413) instead of keeping a cut file. Part headers beyond
 * their limits are cut by busboy, which then fails the part's name or filename checks (422).
 */
const MULTIPART_LIMITS = { parts: 20, fields: 10, fieldSize: 4096, headerPairs: 20, headerSize: 16 * 1024, fileSize: Number.MAX_SAFE_INTEGER };

/**
 * Reads an upload, raw or multipart, handing the content stream to `consume` as it arrives.
 * `consume` gets the fields seen before the content (and the part's filename), so a request
 * doomed by them fails before its bytes are stored. The content is committed to the store
 * only once the whole body has been read and found sound; any failure discards it.
 */
async function receive(request: FastifyRequest, accepted: readonly string[], consume: Consume): Promise<Received> {
  if (!request.isMultipart()) {
    // Not destroyed when the store stops reading (413 mid-stream): the gateway still drains
    // it, so that the answer reaches the client (see gateway/linger.ts).
    const body = request.raw.iterator({ destroyOnReturn: false });
    return { blob: await committed(await consume(body, { fields: {} })), contentType: request.headers['content-type'], fields: {} };
  }
  let content: Content | undefined;
  try {
    const form = await readMultipart(request, accepted, async (stream, early) => {
      content = await consume(stream, early);
    });
    return { ...form, blob: await committed(content as Content) };
  } catch (error) {
    if (content && 'discard' in content) await content.discard();
    throw error;
  }
}

async function committed(content: Content): Promise<Received['blob']> {
  return 'commit' in content ? content.commit() : content;
}

/**
 * Walks a multipart body: fields, then the one part named `file`, handed to `onFile` while it
 * arrives. Everything wrong with the body itself is a 4xx: 400 `malformed_body` (framing,
 * boundary, truncation), 413 (too many parts), 422 (a field unknown or too long, no or two
 * `file` parts).
 */
async function readMultipart(
  request: FastifyRequest,
  accepted: readonly string[],
  onFile: (content: AsyncIterable<Uint8Array>, early: { fields: Record<string, string>; filename?: string }) => Promise<void>,
): Promise<Omit<Received, 'blob'>> {
  const fields: Record<string, string> = {};
  let file: { contentType: string; filename: string } | undefined;
  const parts = request.parts({ limits: MULTIPART_LIMITS });
  for (let next = await nextPart(parts); !next.done; next = await nextPart(parts)) {
    const part = next.value;
    if (part.fieldname !== 'file' && !accepted.includes(part.fieldname)) {
      const field = part.fieldname.length > 100 ? `${part.fieldname.slice(0, 100)}...` : part.fieldname;
      fail(Errors.validationFailed, `This upload takes a part file${accepted.length ? ` and the fields ${accepted.join(', ')}` : ''}`, {
        errors: [{ field, message: 'is not an accepted field' }],
      });
    }
    if (part.type === 'field') {
      if (part.valueTruncated) {
        fail(Errors.validationFailed, `Multipart fields are limited to ${MULTIPART_LIMITS.fieldSize} bytes`, { errors: [{ field: part.fieldname, message: 'is too long' }] });
      }
      if (typeof part.value === 'string') fields[part.fieldname] = part.value;
      continue;
    }
    if (file) fail(Errors.validationFailed, 'Send one part named file', { errors: [{ field: 'file', message: 'appears twice' }] });
    file = { contentType: part.mimetype, filename: part.filename };
    await readFilePart(request, part.file, (content) => onFile(content, { fields: { ...fields }, filename: part.filename }));
  }
  if (!file) fail(Errors.validationFailed, 'A multipart upload needs a part named file', { errors: [{ field: 'file', message: 'is required' }] });
  return { contentType: file.contentType, fields, filename: file.filename };
}

/** The next part, with the parser's failures told as what they are: the body's fault. */
async function nextPart(parts: AsyncIterator<Multipart>): Promise<IteratorResult<Multipart>> {
  try {
    return await parts.next();
  } catch (error) {
    throw multipartError(error);
  }
}

/** Runs `consume` on a file part's content. */
async function readFilePart(request: FastifyRequest, stream: Readable, consume: (content: AsyncIterable<Uint8Array>) => Promise<void>): Promise<void> {
  const raw: IncomingMessage = request.raw;
  // busboy does not fail a part whose client went away: do it, so the store drops its temp file.
  const onClose = () => {
    if (!raw.complete) stream.destroy(new Error('client disconnected during the upload'));
  };
  raw.once('close', onClose);
  try {
    await consume(contentOf(stream));
  } finally {
    raw.off('close', onClose);
  }
}

/**
 * A part's bytes. A failure to read them (the body cut short, the client gone) is the body's
 * fault, told as a 400; a failure of whatever consumes them (the store) stays what it is.
 */
async function* contentOf(stream: Readable): AsyncIterable<Uint8Array> {
  try {
    for await (const chunk of stream) yield chunk;
  } catch (error) {
    throw multipartError(error);
  }
}

/** What @fastify/multipart and busboy throw, as problems. Anything they raise is about the body. */
function multipartError(error: unknown): AppError {
  if (error instanceof AppError) return error;
  const code = (error as { code?: string }).code;
  if (code === 'FST_PARTS_LIMIT' || code === 'FST_FILES_LIMIT' || code === 'FST_FIELDS_LIMIT') {
    return new AppError(Errors.payloadTooLarge, `A multipart upload has at most ${MULTIPART_LIMITS.parts} parts and ${MULTIPART_LIMITS.fields} fields; nothing was kept`);
  }
  const reason = error instanceof Error ? error.message : String(error);
  return new AppError(Errors.malformedBody, `The multipart body could not be read (${reason}); nothing was kept`, { cause: error });
}

function fingerprint(request: FastifyRequest, principal: TenantPrincipal, sha256: string, params: unknown[]): string {
  const path = request.url.split('?')[0];
  return createHash('sha256').update(JSON.stringify([request.method, path, principalKey(principal), sha256, ...params])).digest('hex');
}

function sendAnswer(reply: FastifyReply, answer: WriteAnswer) {
  if (answer.replayed) reply.header('idempotent-replayed', 'true');
  return reply.code(answer.status).send(answer.file);
}

/**
 * Upload routes live in a scope of their own: every body passes through unparsed (no JSON
 * parser, no 1 MiB limit), multipart is parsed as a stream, and the content goes straight
 * into the blob store while it is hashed.
 */
function uploadRoutes(files: FilesService) {
  return async (app: FastifyInstance) => {
    app.removeAllContentTypeParsers();
    app.addContentTypeParser('*', (_request, _payload, done) => done(null));
    await app.register(multipart, { throwFileSizeLimit: false });

    app.post(
      '/files',
      {
        config: { auth: [...READERS], scope: 'files:write' },
        schema: {
          tags: ['files'],
          summary: 'Upload a file',
          description:
            'multipart/form-data with a part `file` (and optional fields `path`, `name`, `owner_id`), or a raw body with its Content-Type and `?name=&path=`. ' +
            'The content is streamed to storage while it is hashed. Optional Idempotency-Key: a retry replays the first answer and stores nothing twice. ' +
            UPLOAD_ERRORS +
            VISIBILITY,
          querystring: UploadQuery,
          headers: UploadHeaders,
          response: { 201: FileObject, 400: problem, 401: problem, 409: problem, 413: problem, 422: problem },
        },
      },
      async (request, reply) => {
        const principal = filesPrincipal(request);
        const query = request.query as { name?: string; path?: string; owner_id?: string };
        const key = request.headers['idempotency-key'] as string | undefined;
        const multipartBody = request.isMultipart();
        const limit = await files.checkDeclaredSize(principal, declaredLength(request), multipartBody ? MULTIPART_SLACK : 0);
        const recorded = key ? await files.recordedAnswer(principal, key) : null;

        const target = (fields: Record<string, string>, filename?: string) => {
          const rawName = fields.name ?? query.name ?? filename;
          if (rawName === undefined || rawName === '') {
            fail(Errors.validationFailed, 'The file needs a name (?name= or the multipart filename)', { errors: [{ field: 'name', message: 'is required' }] });
          }
          return {
            name: validateName(rawName),
            path: normalizePath(fields.path ?? query.path),
            owner: files.resolveOwner(principal, fields.owner_id ?? query.owner_id),
          };
        };

        // Fail fast, before the bytes are stored, on what the request already says. Not with an
        // Idempotency-Key: a twin that committed meanwhile must be replayed, not refused.
        const precheck = !key;
        if (!multipartBody) {
          const early = target({});
          if (precheck) await files.precheckCreate(principal, early);
        }
        const received = await receive(request, CREATE_FIELDS, async (content, early) => {
          if (multipartBody) {
            const known = target(early.fields, early.filename);
            if (precheck) await files.precheckCreate(principal, known);
          }
          return recorded ? files.hashContent(content, limit) : files.stageContent(principal, content, limit);
        });
        const final = target(received.fields, received.filename);
        const print = fingerprint(request, principal, received.blob.sha256, [final.name, final.path, final.owner, received.contentType ?? null]);
        if (recorded) return sendAnswer(reply, replayOf(recorded, print));
        const idempotency: Idempotency | undefined = key ? { key, fingerprint: print } : undefined;
        const answer = await files.create(principal, { ...final, contentType: received.contentType, blob: received.blob as StoredBlob, idempotency });
        return sendAnswer(reply, answer);
      },
    );

    app.put(
      '/files/:id/content',
      {
        config: { auth: [...READERS], scope: 'files:write' },
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
          response: { 200: FileObject, 400: problem, 401: problem, 404: problem, 412: problem, 413: problem, 422: problem },
        },
      },
      async (request, reply) => {
        const principal = filesPrincipal(request);
        const { id } = request.params as { id: string };
        const key = request.headers['idempotency-key'] as string | undefined;
        const ifMatch = request.headers['if-match'];
        // A file the caller cannot see is a 404 whatever the body: checked before its size.
        const recorded = key ? await files.recordedAnswer(principal, key) : null;
        if (!recorded) await files.precheckReplace(principal, id, key ? undefined : ifMatch);
        const limit = await files.checkDeclaredSize(principal, declaredLength(request), request.isMultipart() ? MULTIPART_SLACK : 0);
        const received = await receive(request, [], (content) =>
          recorded ? files.hashContent(content, limit) : files.stageContent(principal, content, limit),
        );
        const print = fingerprint(request, principal, received.blob.sha256, [ifMatch ?? null, received.contentType ?? null]);
        if (recorded) return sendAnswer(reply, replayOf(recorded, print));
        const answer = await files.replace(principal, id, {
          contentType: received.contentType,
          blob: received.blob as StoredBlob,
          ifMatch,
          idempotency: key ? { key, fingerprint: print } : undefined,
        });
        return sendAnswer(reply, answer);
      },
    );
  };
}

export function filesRoutes(files: FilesService) {
  return async (app: FastifyInstance) => {
    await app.register(uploadRoutes(files));

    app.get(
      '/files',
      {
        config: { auth: [...READERS], scope: 'files:read' },
        schema: { tags: ['files'], summary: 'List files, newest first', description: VISIBILITY, querystring: ListFilesQuery, response: { 200: FilePage } },
      },
      async (request) => {
        const query = request.query as { limit: number; cursor?: string; path?: string };
        return files.list(filesPrincipal(request), query);
      },
    );

    app.get(
      '/files/:id',
      {
        config: { auth: [...READERS], scope: 'files:read' },
        schema: { tags: ['files'], summary: 'A file\'s metadata', description: VISIBILITY, params: FileParams, response: { 200: FileObject, 404: problem } },
      },
      async (request) => files.get(filesPrincipal(request), (request.params as { id: string }).id),
    );

    app.get(
      '/files/:id/content',
      {
        config: { auth: [...READERS], scope: 'files:read' },
        schema: {
          tags: ['files'],
          summary: 'Download the content',
          description: `ETag is "<sha256>". Supports Range (206; 416 when unsatisfiable), If-None-Match (304) and If-Range. ${VISIBILITY}`,
          params: FileParams,
        },
      },
      async (request, reply) => {
        const principal = filesPrincipal(request);
        const file = await files.get(principal, (request.params as { id: string }).id);
        const etag = `"${file.sha256}"`;
        reply.headers({
          etag,
          'last-modified': new Date(file.updated_at).toUTCString(),
          'cache-control': 'private, no-cache',
          'accept-ranges': 'bytes',
          'x-content-type-options': 'nosniff',
        });
        if (noneMatch(request.headers['if-none-match'], etag)) return reply.code(304).send();

        const ifRange = request.headers['if-range'];
        const range = ifRange && ifRange !== etag ? null : parseRange(request.headers.range, file.size);
        if (range === 'unsatisfiable') {
          reply.header('content-range', `bytes */${file.size}`);
          throw new AppError(Errors.rangeNotSatisfiable, `The file has ${file.size} bytes`);
        }
        const stream = await files.openContent(principal, file, range ?? undefined);
        reply.headers({ 'content-type': file.content_type, 'content-disposition': contentDisposition(file.name) });
        if (range) {
          reply.code(206).headers({ 'content-range': `bytes ${range.start}-${range.end}/${file.size}`, 'content-length': range.end - range.start + 1 });
        } else {
          reply.header('content-length', file.size);
        }
        return reply.send(stream);
      },
    );

    app.patch(
      '/files/:id',
      {
        config: { auth: [...READERS], scope: 'files:write' },
        schema: {
          tags: ['files'],
          summary: 'Rename or move a file',
          description: `Makes a new version (same content, new name or folder). ${VISIBILITY}`,
          params: FileParams,
          body: PatchFileBody,
          response: { 200: FileObject, 404: problem, 409: problem },
        },
      },
      async (request) => files.update(filesPrincipal(request), (request.params as { id: string }).id, request.body as { name?: string; path?: string }),
    );

    app.delete(
      '/files/:id',
      {
        config: { auth: [...READERS], scope: 'files:write' },
        schema: {
          tags: ['files'],
          summary: 'Delete a file (its history stays in the backups)',
          description: VISIBILITY,
          params: FileParams,
          response: { 204: Type.Null(), 404: problem },
        },
      },
      async (request, reply) => {
        await files.remove(filesPrincipal(request), (request.params as { id: string }).id);
        return reply.code(204).send();
      },
    );

    app.get(
      '/usage',
      {
        config: { auth: ['account_key', 'user'] },
        schema: { tags: ['files'], summary: 'Storage use of the tenant in this environment (account key or admin)', response: { 200: Usage } },
      },
      async (request) => {
        const principal = filesPrincipal(request);
        if (!isTenantAdmin(principal)) fail(Errors.forbidden, 'Usage is for account keys and admin users');
        return files.usage(principal);
      },
    );
  };
}
