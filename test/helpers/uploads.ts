import tls from 'node:tls';
import { Agent, fetch } from 'undici';
import { streamUpload } from './files.ts';
import type { TestServer } from './server.ts';

/**
 * Upload clients as people use them, each reporting the answer it could read (or the error it
 * got instead): undici's `fetch`, node:https, and a bare TLS socket that speaks HTTP/1.1 by hand.
 */
export interface ClientAnswer {
  status: number;
  // biome-ignore lint/suspicious/noExplicitAny: tests read arbitrary JSON
  json: any;
  headers: Record<string, string>;
}

export interface Upload {
  method?: 'POST' | 'PUT';
  path: string;
  /** Sent as Bearer; omitted: no credentials. */
  auth?: string;
  contentType: string;
  body: Buffer;
  headers?: Record<string, string>;
  /** Send the body chunked, without Content-Length (the server learns its size only as it reads). */
  chunked?: boolean;
}

function parseJson(text: string): unknown {
  try {
    return text ? JSON.parse(text) : undefined;
  } catch {
    return undefined;
  }
}

export async function fetchUpload(server: TestServer, upload: Upload): Promise<ClientAnswer> {
  const dispatcher = new Agent({ connect: { ca: server.ca } });
  try {
    const headers: Record<string, string> = { 'content-type': upload.contentType, ...upload.headers };
    if (upload.auth) headers.authorization = `Bearer ${upload.auth}`;
    const body = upload.chunked ? streamOf(upload.body) : upload.body;
    const response = await fetch(new URL(upload.path, server.url), {
      method: upload.method ?? 'POST',
      headers,
      body,
      dispatcher,
      ...(upload.chunked ? { duplex: 'half' as const } : {}),
    });
    const text = await response.text();
    return { status: response.status, json: parseJson(text), headers: Object.fromEntries(response.headers) };
  } finally {
    await dispatcher.close().catch(() => undefined);
  }
}

function streamOf(body: Buffer): ReadableStream<Uint8Array> {
  let offset = 0;
  return new ReadableStream({
    pull(controller) {
      if (offset >= body.length) return controller.close();
      controller.enqueue(body.subarray(offset, offset + 64 * 1024));
      offset += 64 * 1024;
    },
  });
}

/** node:https, the way most Node SDKs send: `end(body)`, then wait for the response. Errors after it are ignored. */
export async function httpsUpload(server: TestServer, upload: Upload): Promise<ClientAnswer> {
  const headers: Record<string, string | number> = { 'content-type': upload.contentType, ...upload.headers };
  if (!upload.chunked) headers['content-length'] = upload.body.length;
  const answer = await streamUpload(server, {
    method: upload.method,
    path: upload.path,
    key: upload.auth,
    headers,
    write: async (request) => void request.end(upload.body),
  });
  return { ...answer, headers: Object.fromEntries(Object.entries(answer.headers).map(([k, v]) => [k, String(v)])) };
}

export interface TlsUploadOptions {
  /** Bytes per write, and the pause between writes: a slow client. */
  chunkBytes?: number;
  pauseMs?: number;
  /**
   * Read nothing until the whole body is written (a client that checks for an answer only
   * once its request is out). Otherwise the answer is read as it comes, and writing stops there.
   */
  writeAllFirst?: boolean;
}

/** A bare TLS socket writing the request by hand, slowly. Rejects when it could not read an answer. */
export function tlsUpload(server: TestServer, upload: Upload, options: TlsUploadOptions = {}): Promise<ClientAnswer> {
  const { chunkBytes = 64 * 1024, pauseMs = 1, writeAllFirst = false } = options;
  const url = new URL(server.url);
  return new Promise((resolve, reject) => {
    const socket = tls.connect({ host: url.hostname, port: Number(url.port), ca: server.ca, servername: 'localhost' });
    const received: Buffer[] = [];
    let answer: ClientAnswer | null = null;
    const tryParse = () => {
      answer ??= parseResponse(Buffer.concat(received));
      if (answer) {
        socket.destroy();
        resolve(answer);
      }
    };
    socket.on('data', (chunk: Buffer) => {
      received.push(chunk);
      tryParse();
    });
    socket.on('end', tryParse);
    socket.on('close', () => {
      if (!answer) reject(new Error(`connection closed without a complete answer (${Buffer.concat(received).length} bytes read)`));
    });
    socket.on('error', (error) => {
      if (!answer) reject(error);
    });
    if (writeAllFirst) socket.pause();
    socket.once('secureConnect', async () => {
      const lines = [`${upload.method ?? 'POST'} ${upload.path} HTTP/1.1`, 'Host: localhost', `Content-Type: ${upload.contentType}`];
      if (upload.auth) lines.push(`Authorization: Bearer ${upload.auth}`);
      for (const [name, value] of Object.entries(upload.headers ?? {})) lines.push(`${name}: ${value}`);
      lines.push(upload.chunked ? 'Transfer-Encoding: chunked' : `Content-Length: ${upload.body.length}`);
      socket.write(`${lines.join('\r\n')}\r\n\r\n`);
      for (let offset = 0; offset < upload.body.length && !answer && !socket.destroyed; offset += chunkBytes) {
        const piece = upload.body.subarray(offset, offset + chunkBytes);
        const framed = upload.chunked ? Buffer.concat([Buffer.from(`${piece.length.toString(16)}\r\n`), piece, Buffer.from('\r\n')]) : piece;
        if (!socket.write(framed)) await new Promise((resolve) => socket.once('drain', resolve));
        await new Promise((resolve) => setTimeout(resolve, pauseMs));
      }
      if (upload.chunked && !answer && !socket.destroyed) socket.write('0\r\n\r\n');
      if (writeAllFirst) socket.resume();
    });
  });
}

/** A complete HTTP/1.1 response with a Content-Length body, or null while more is needed. */
export function parseResponse(raw: Buffer): ClientAnswer | null {
  const end = raw.indexOf('\r\n\r\n');
  if (end < 0) return null;
  const [statusLine, ...headerLines] = raw.subarray(0, end).toString('latin1').split('\r\n');
  const headers: Record<string, string> = {};
  for (const line of headerLines) {
    const colon = line.indexOf(':');
    headers[line.slice(0, colon).trim().toLowerCase()] = line.slice(colon + 1).trim();
  }
  const length = Number(headers['content-length'] ?? 0);
  if (raw.length < end + 4 + length) return null;
  const body = raw.subarray(end + 4, end + 4 + length).toString();
  return { status: Number(statusLine?.split(' ')[1]), json: parseJson(body), headers };
}
