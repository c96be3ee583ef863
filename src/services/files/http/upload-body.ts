import type { IncomingMessage } from 'node:http';
import type { Readable } from 'node:stream';
import type { Multipart } from '@fastify/multipart';
import type { FastifyRequest } from 'fastify';
import { AppError, Errors, fail } from '../../../core/errors.ts';
import type { ConsumeContent, Upload, UploadBody } from '../domain/uploads.ts';

/**
 * An upload request's body, as the domain's `Upload` takes it: raw (the body is the content,
 * its Content-Type the content's) or multipart (form fields, and one part named `file`).
 */

/**
 * No fileSize limit: busboy would silently truncate at it. The blob store enforces the upload
 * limit itself, failing the upload (413) instead of keeping a cut file. Part headers beyond
 * their limits are cut by busboy, which then fails the part's name or filename checks (422).
 */
const MULTIPART_LIMITS = { parts: 20, fields: 10, fieldSize: 4096, headerPairs: 20, headerSize: 16 * 1024, fileSize: Number.MAX_SAFE_INTEGER };

/** The body of an upload route (one with `body: 'stream'`); `accepted` are the form fields it takes besides `file`. */
export function uploadBodyOf(request: FastifyRequest, accepted: readonly string[]): Pick<Upload, 'declaredBytes' | 'framed' | 'read'> {
  const header = request.headers['content-length'];
  const framed = request.isMultipart();
  return {
    declaredBytes: header === undefined ? undefined : Number(header),
    framed,
    read: (consume) => (framed ? readMultipart(request, accepted, consume) : readRaw(request, consume)),
  };
}

async function readRaw(request: FastifyRequest, consume: ConsumeContent): Promise<UploadBody> {
  // Not destroyed when the store stops reading (413 mid-stream): the gateway still drains
  // it, so that the answer reaches the client (see gateway/linger.ts).
  await consume(request.raw.iterator({ destroyOnReturn: false }), { fields: {} });
  return { contentType: request.headers['content-type'], fields: {} };
}

/**
 * Walks a multipart body: fields, then the one part named `file`, handed to `consume` while it
 * arrives. Everything wrong with the body itself is a 4xx: 400 `malformed_body` (framing,
 * boundary, truncation), 413 (too many parts), 422 (a field unknown or too long, no or two
 * `file` parts).
 */
async function readMultipart(request: FastifyRequest, accepted: readonly string[], consume: ConsumeContent): Promise<UploadBody> {
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
    await readFilePart(request, part.file, (content) => consume(content, { fields: { ...fields }, filename: part.filename }));
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
