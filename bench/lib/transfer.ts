import type { ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import fs from 'node:fs/promises';
import https from 'node:https';

/**
 * The client side of the big-transfer pairs (bench/files.bench.ts, bench/distributed.bench.ts):
 * an upload streamed from one random MiB sent over and over (raw or as one multipart part),
 * a download counted and dropped, one fresh connection each (no agent), so that no request
 * holds more than a few socket buffers in the bench process. And what the memory pairs need
 * of a server child process: its VmRSS and VmHWM, and a stop.
 */

/** Multipart framing around one part `file`: what goes before its bytes, and after. */
export interface Form {
  boundary: string;
  head: Buffer;
  tail: Buffer;
}

export function formOf(filename: string): Form {
  const boundary = `bantubench${randomBytes(8).toString('hex')}`;
  return {
    boundary,
    head: Buffer.from(`--${boundary}\r\nContent-Disposition: form-data; name="file"; filename="${filename}"\r\nContent-Type: application/octet-stream\r\n\r\n`),
    tail: Buffer.from(`\r\n--${boundary}--\r\n`),
  };
}

/** What a transfer needs: the server's CA certificate, and the MiB an upload sends over and over. */
export interface TransferClient {
  ca: string;
  chunk: Buffer;
}

export interface SendOptions {
  auth?: string;
  /** The bytes sent over and over (default the client's random MiB). */
  chunk?: Buffer;
  /** Send the bytes as the part `file` of a multipart body instead of raw. */
  form?: Form;
}

/** Sends `bytes` (the same random MiB over and over), raw or as a multipart part, and resolves with the status and body. */
export function send(client: TransferClient, method: string, url: string, bytes: number, options: SendOptions = {}): Promise<{ status: number; body: string }> {
  const { auth, chunk = client.chunk, form } = options;
  return new Promise((resolve, reject) => {
    const request = https.request(url, {
      method,
      ca: client.ca,
      agent: false,
      headers: {
        'content-type': form ? `multipart/form-data; boundary=${form.boundary}` : 'application/octet-stream',
        'content-length': bytes + (form ? form.head.length + form.tail.length : 0),
        ...(auth ? { authorization: `Bearer ${auth}` } : {}),
      },
    });
    request.on('error', reject);
    request.on('response', (response) => {
      let body = '';
      response.on('data', (c) => (body += c));
      response.on('end', () => resolve({ status: response.statusCode ?? 0, body }));
    });
    (async () => {
      if (form) request.write(form.head);
      let sent = 0;
      while (sent < bytes) {
        const piece = chunk.subarray(0, Math.min(chunk.length, bytes - sent));
        sent += piece.length;
        if (!request.write(piece)) await new Promise((r) => request.once('drain', r));
      }
      request.end(form?.tail);
    })().catch(reject);
  });
}

/** Downloads `url` and resolves with the number of body bytes (the bytes themselves are dropped); rejects on a status other than 200. */
export function receive(client: Pick<TransferClient, 'ca'>, url: string, auth?: string): Promise<number> {
  return new Promise((resolve, reject) => {
    https
      .get(url, { ca: client.ca, agent: false, headers: auth ? { authorization: `Bearer ${auth}` } : {} }, (response) => {
        if (response.statusCode !== 200) {
          response.resume();
          reject(new Error(`GET ${url}: status ${response.statusCode}`));
          return;
        }
        let size = 0;
        response.on('data', (c: Buffer) => (size += c.length));
        response.on('end', () => resolve(size));
        response.on('error', reject);
      })
      .on('error', reject);
  });
}

/** VmRSS and VmHWM (peak RSS since start or the last reset) of a process, in KiB (Linux). */
export async function memoryKiB(pid: number): Promise<{ rss: number; hwm: number }> {
  const status = await fs.readFile(`/proc/${pid}/status`, 'utf8');
  const field = (name: string) => Number(new RegExp(`^${name}:\\s+(\\d+) kB`, 'm').exec(status)?.[1] ?? Number.NaN);
  return { rss: field('VmRSS'), hwm: field('VmHWM') };
}

/** Resets a process's VmHWM to its current VmRSS (Linux: "5" to /proc/<pid>/clear_refs). */
export async function resetPeak(pid: number): Promise<void> {
  await fs.writeFile(`/proc/${pid}/clear_refs`, '5');
}

/** SIGTERM, then SIGKILL after 30 s; resolves once the child has exited. */
export async function stopChild(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise((resolve) => child.once('exit', resolve));
  child.kill('SIGTERM');
  const timer = setTimeout(() => child.kill('SIGKILL'), 30_000);
  await exited;
  clearTimeout(timer);
}
