import type { FastifyReply, FastifyRequest } from 'fastify';
import { AppError, Errors } from '../core/errors.ts';
import type { ByteRange } from '../core/ports.ts';

/**
 * HTTP details of downloads: Range (RFC 9110 14), conditional requests, Content-Disposition
 * (RFC 6266 with an RFC 8187 `filename*` for names that are not plain ASCII).
 */

/**
 * A single `bytes=` range, resolved against `size`. Null means "ignore the header and send
 * everything" (absent, malformed, or several ranges, which a server may answer whole);
 * 'unsatisfiable' means 416.
 */
export function parseRange(header: string | undefined, size: number): ByteRange | 'unsatisfiable' | null {
  if (!header) return null;
  const match = /^bytes=(\d*)-(\d*)$/.exec(header.trim());
  if (!match) return null;
  const [, first = '', last = ''] = match;
  if (first === '' && last === '') return null;
  if (first === '') {
    const suffix = Number(last);
    if (suffix === 0 || size === 0) return 'unsatisfiable';
    return { start: Math.max(0, size - suffix), end: size - 1 };
  }
  const start = Number(first);
  if (last !== '' && Number(last) < start) return null; // invalid, not unsatisfiable: ignored
  if (start >= size) return 'unsatisfiable';
  const end = last === '' ? size - 1 : Number(last);
  return { start, end: Math.min(end, size - 1) };
}

/** `If-None-Match` (or `If-Range`) against our strong ETag; weak comparison, as RFC 9110 asks for If-None-Match. */
export function noneMatch(header: string | undefined, etag: string): boolean {
  if (!header) return false;
  return header.split(',').some((tag) => {
    const value = tag.trim();
    return value === '*' || value.replace(/^W\//, '') === etag;
  });
}

// RFC 8187 attr-char: what may stay unescaped in `filename*`.
const ATTR_CHAR = /[A-Za-z0-9!#$&+\-.^_`|~]/;

export function contentDisposition(name: string): string {
  const ascii = name.replace(/[^\x20-\x7e]|["\\%]/g, '_');
  let encoded = '';
  for (const byte of Buffer.from(name, 'utf8')) {
    const char = String.fromCharCode(byte);
    encoded += byte < 0x80 && ATTR_CHAR.test(char) ? char : `%${byte.toString(16).toUpperCase().padStart(2, '0')}`;
  }
  return `attachment; filename="${ascii}"; filename*=UTF-8''${encoded}`;
}

/** What a download answers with: content-addressed bytes, their name and type. */
export interface Downloadable {
  sha256: string;
  size: number;
  name: string;
  contentType: string;
  lastModified: string;
  /** `private, no-cache` for a file's current content; a version never changes and may be cached for good. */
  cacheControl: string;
}

/**
 * Sends bytes the way every download route does: `ETag: "<sha256>"`, If-None-Match (304),
 * Range and If-Range (206, 416), Content-Disposition. `open` is called only when bytes go out.
 */
export async function sendContent(
  request: FastifyRequest,
  reply: FastifyReply,
  content: Downloadable,
  open: (range?: ByteRange) => Promise<NodeJS.ReadableStream>,
): Promise<FastifyReply> {
  const etag = `"${content.sha256}"`;
  reply.headers({
    etag,
    'last-modified': new Date(content.lastModified).toUTCString(),
    'cache-control': content.cacheControl,
    'accept-ranges': 'bytes',
    'x-content-type-options': 'nosniff',
  });
  if (noneMatch(request.headers['if-none-match'], etag)) return reply.code(304).send();
  const ifRange = request.headers['if-range'];
  const range = ifRange && ifRange !== etag ? null : parseRange(request.headers.range, content.size);
  if (range === 'unsatisfiable') {
    reply.header('content-range', `bytes */${content.size}`);
    throw new AppError(Errors.rangeNotSatisfiable, `The content has ${content.size} bytes`);
  }
  const stream = await open(range ?? undefined);
  reply.headers({ 'content-type': content.contentType, 'content-disposition': contentDisposition(content.name) });
  if (range) {
    reply.code(206).headers({ 'content-range': `bytes ${range.start}-${range.end}/${content.size}`, 'content-length': range.end - range.start + 1 });
  } else {
    reply.header('content-length', content.size);
  }
  return reply.send(stream);
}
