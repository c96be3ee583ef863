import fs from 'node:fs/promises';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import path from 'node:path';
import { Agent } from 'undici';
import { type CliProcess, runCli } from '../test/helpers/cli.ts';
import { makeTempDir, requestWith } from '../test/helpers/server.ts';
import { type BenchPair, definePair, median, perSecond } from './harness.ts';
import { type LoadGenerator, startLoad } from './lib/http-load.ts';
import { cpuMs, descendants } from './lib/proc-cpu.ts';
import { stopChild } from './lib/transfer.ts';

/**
 * What tracing costs the gateway pipeline (issue 19): the same `GET /v1/files/{id}` with an
 * account key (auth, the route, one read) against two `bantu start` processes on the same
 * certificate, A with OTEL_EXPORTER_OTLP_ENDPOINT (every request traced, spans batched to the
 * OTLP/HTTP receiver in this process, which answers at once as a collector does), B without.
 * Child processes, because the OpenTelemetry SDK is process-wide. 32 requests in flight on
 * keep-alive connections from a worker thread, a fixed count per measurement; both logs silent.
 */
const REQUESTS = Number(process.env.BENCH_TRACING_REQUESTS ?? 20_000);
const CONCURRENCY = 32;

interface Side {
  cli: CliProcess;
  url: string;
  dataDir: string;
  key: string;
  fileId: string;
  /** CPU ms per request of the process and its embedded PostgreSQL, per measurement. */
  cpuPerRequest: number[];
}

interface Ctx {
  traced: Side;
  plain: Side;
  receiver: http.Server;
  spans: { count: number };
  load: LoadGenerator;
}

/** Counts the spans it receives; answers like a collector (200, empty partial success). */
async function otlpReceiver(spans: { count: number }): Promise<{ server: http.Server; url: string }> {
  const server = http.createServer((request, response) => {
    const chunks: Buffer[] = [];
    request.on('data', (chunk: Buffer) => chunks.push(chunk));
    request.on('end', () => {
      const body = JSON.parse(Buffer.concat(chunks).toString('utf8') || '{}');
      for (const resource of body.resourceSpans ?? []) for (const scope of resource.scopeSpans ?? []) spans.count += scope.spans?.length ?? 0;
      response.writeHead(200, { 'content-type': 'application/json' }).end('{}');
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return { server, url: `http://127.0.0.1:${(server.address() as AddressInfo).port}` };
}

async function startSide(env: Record<string, string>): Promise<Side> {
  const dataDir = await makeTempDir('bantu-bench-trace-');
  const cli = runCli(['start'], { BANTU_DATA_DIR: dataDir, BANTU_PORT: '0', BANTU_LOG_LEVEL: 'silent', ...env });
  try {
    const url = await cli.ready();
    const tenant = JSON.parse(await fs.readFile(path.join(dataDir, 'secrets', 'default-tenant.json'), 'utf8'));
    const key = tenant.keys.test.account_key as string;
    const ca = await fs.readFile(env.BANTU_TLS_CERT ?? path.join(dataDir, 'tls', 'cert.pem'), 'utf8');
    const agent = new Agent({ connect: { ca } });
    const created = await requestWith(agent, url, 'POST', '/v1/files?name=traced.txt', { auth: key, headers: { 'content-type': 'text/plain' }, body: 'hello' });
    await agent.close();
    if (created.status !== 201) throw new Error(`create failed: ${created.status} ${created.text}`);
    return { cli, url, dataDir, key, fileId: created.json.id, cpuPerRequest: [] };
  } catch (error) {
    await stopChild(cli.child);
    throw error;
  }
}

async function stopSide(side: Side): Promise<void> {
  await stopChild(side.cli.child);
  await fs.rm(side.dataDir, { recursive: true, force: true });
}

/** CPU ms used so far by a side: its process and the embedded PostgreSQL below it. */
function sideCpuMs(side: Side): number {
  const pid = side.cli.child.pid as number;
  return [pid, ...descendants(pid)].reduce((sum, id) => sum + cpuMs(`/proc/${id}/stat`), 0);
}

const rate = async (load: LoadGenerator, side: Side) => {
  const cpuBefore = sideCpuMs(side);
  const { elapsedMs } = await load.run({
    origin: side.url,
    path: `/v1/files/${side.fileId}`,
    headers: { authorization: `Bearer ${side.key}` },
    count: REQUESTS,
    concurrency: CONCURRENCY,
  });
  side.cpuPerRequest.push((sideCpuMs(side) - cpuBefore) / REQUESTS);
  return perSecond(REQUESTS, elapsedMs);
};

export const pairs: BenchPair[] = [
  definePair<Ctx>({
    name: 'gateway/tracing-on',
    description: `GET /v1/files/{id} with an account key over HTTPS, ${CONCURRENCY} in flight, ${REQUESTS} per measurement: A \`bantu start\` exporting every request's spans over OTLP/HTTP to a local receiver, B the same without tracing`,
    labels: { a: 'tracing on', b: 'tracing off' },
    unit: 'req/s',
    higherIsBetter: true,
    target: { ratio: 0.85, description: 'tracing every request (exported over OTLP/HTTP) keeps at least 85% of the untraced rate (issue 19)' },
    rounds: 5,
    warmup: 1,
    async setup() {
      const spans = { count: 0 };
      const receiver = await otlpReceiver(spans);
      const traced = await startSide({ OTEL_EXPORTER_OTLP_ENDPOINT: receiver.url });
      try {
        // One certificate for both, so that one client trusts both.
        const tls = path.join(traced.dataDir, 'tls');
        const plain = await startSide({ BANTU_TLS_CERT: path.join(tls, 'cert.pem'), BANTU_TLS_KEY: path.join(tls, 'key.pem') });
        const load = await startLoad({ ca: await fs.readFile(path.join(tls, 'cert.pem'), 'utf8') });
        return { traced, plain, receiver: receiver.server, spans, load };
      } catch (error) {
        await stopSide(traced);
        receiver.server.close();
        throw error;
      }
    },
    a: (ctx) => rate(ctx.load, ctx.traced),
    b: (ctx) => rate(ctx.load, ctx.plain),
    notes: (ctx) => {
      const a = median(ctx.traced.cpuPerRequest);
      const b = median(ctx.plain.cpuPerRequest);
      // On a machine busy with other work the rates mostly say how the cores were shared; CPU per request is what tracing costs.
      return {
        'A CPU ms/request (bantu + its PostgreSQL)': a,
        'B CPU ms/request (bantu + its PostgreSQL)': b,
        'CPU-bound ratio (B CPU per request / A CPU per request)': b / a,
        'spans received by the OTLP receiver': ctx.spans.count,
      };
    },
    async teardown(ctx) {
      await ctx.load.close();
      await stopSide(ctx.plain);
      await stopSide(ctx.traced);
      ctx.receiver.close();
    },
  }),
];
