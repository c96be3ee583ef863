/**
 * What one 1 KiB create costs in statements (issue 13): runs CREATES multipart creates with a
 * user JWT, 16 in flight, against an in-process Bantu (backup worker off, as in
 * files/create-1kib), and counts, per create, the statements each pg connection sent (by the
 * text's first words) and the outbox notifications that carried their event or not.
 * `node --import tsx bench/diagnostics/create-queries.ts`
 */
import { randomBytes } from 'node:crypto';
import fs from 'node:fs/promises';
import { Session } from 'node:inspector/promises';
import path from 'node:path';
import pg from 'pg';
import { startServer } from '../../test/helpers/server.ts';
import { startLoad } from '../lib/http-load.ts';

const CREATES = Number(process.env.CREATES ?? 2000);
const counts = new Map<string, number>();
const notes = { riding: 0, without: 0 };
let counting = false;

const query = pg.Client.prototype.query as (...args: unknown[]) => unknown;
(pg.Client.prototype as { query: unknown }).query = function (this: pg.Client, ...args: unknown[]) {
  if (counting) {
    const first = args[0] as string | { text?: string };
    const text = (typeof first === 'string' ? first : (first?.text ?? '?')).replace(/\s+/g, ' ').trim().slice(0, 90);
    counts.set(text, (counts.get(text) ?? 0) + 1);
  }
  return query.apply(this, args);
};
const emit = pg.Client.prototype.emit;
pg.Client.prototype.emit = function (this: pg.Client, event: string | symbol, ...args: unknown[]) {
  if (counting && event === 'notification') {
    const payload = (args[0] as { payload?: string }).payload ?? '';
    if (payload.includes('"event"')) notes.riding++;
    else notes.without++;
  }
  return emit.call(this, event, ...args);
};

const server = await startServer({ BANTU_LOG_LEVEL: 'silent', BANTU_BACKUP_WORKER: 'off' });
try {
  const registered = await server.request('POST', '/v1/auth/register', {
    basic: server.keys.test.application_key,
    json: { email: 'diag@example.com', password: 'diagnostic password 1', name: 'Diag' },
  });
  const cert = await fs.readFile(path.join(server.dataDir, 'tls', 'cert.pem'), 'utf8');
  const load = await startLoad({ ca: cert });
  const boundary = 'diagboundary';
  const body =
    `--${boundary}\r\nContent-Disposition: form-data; name="file"; filename="c.bin"\r\nContent-Type: application/octet-stream\r\n\r\n` +
    `{n}${randomBytes(759).toString('base64url')}\r\n--${boundary}--\r\n`;
  const run = (count: number, folder: string) =>
    load.run({
      origin: server.url,
      path: `/v1/files?path=${folder}&name=c-{n}.bin`,
      method: 'POST',
      headers: { authorization: `Bearer ${registered.json.access_token}`, 'content-type': `multipart/form-data; boundary=${boundary}` },
      body,
      count,
      concurrency: 16,
      numbered: true,
      expectStatus: 201,
    });
  await run(200, '/warm');
  // PROFILE=<file>: a CPU profile of this thread (the server's) during the counted creates.
  const session = process.env.PROFILE ? new Session() : undefined;
  if (session) {
    session.connect();
    await session.post('Profiler.enable');
    await session.post('Profiler.start');
  }
  counting = true;
  const { elapsedMs } = await run(CREATES, '/diag');
  if (session && process.env.PROFILE) {
    const { profile } = await session.post('Profiler.stop');
    await fs.writeFile(process.env.PROFILE, JSON.stringify(profile));
  }
  await new Promise((resolve) => setTimeout(resolve, 300));
  counting = false;
  console.log(`${CREATES} creates in ${elapsedMs.toFixed(0)} ms (${((CREATES * 1000) / elapsedMs).toFixed(0)}/s)`);
  console.log(`notifications per create: with their event ${(notes.riding / CREATES).toFixed(3)}, without ${(notes.without / CREATES).toFixed(3)}`);
  for (const [text, n] of [...counts].sort((a, b) => b[1] - a[1])) console.log(`${(n / CREATES).toFixed(3)}  ${text}`);
  await load.close();
} finally {
  await server.close();
}
