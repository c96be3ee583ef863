import { randomBytes } from 'node:crypto';
import fs from 'node:fs/promises';
import net from 'node:net';
import path from 'node:path';
import { jetstreamManager } from '@nats-io/jetstream';
import { connect } from '@nats-io/transport-node';
import { Agent } from 'undici';
import { streamName } from '../../src/adapters/bus/nats-relay.ts';
import { dropDatabases } from '../../src/adapters/db/pg.ts';
import type { ServiceName } from '../../src/platform/catalogue.ts';
import { type CliProcess, runCli } from './cli.ts';
import { makeTempDir, type RequestOptions, requestWith, SHARED_POSTGRES_IDLE_MS, type TestResponse } from './server.ts';

/**
 * A distributed deployment started the way an operator would: one `bantu serve <service>`
 * process per instance, on the machine's PostgreSQL (a database of its own), NATS (a prefix of
 * its own) and Redis (a prefix of its own), sharing one data dir for blobs, backups and the
 * gateway's certificate. The gateway's port is chosen up front so every process agrees on the
 * tokens' issuer (BANTU_PUBLIC_URL).
 */
export interface Deployment {
  url: string;
  dataDir: string;
  env: Record<string, string>;
  operatorToken: string;
  keys: { live: { account_key: string; application_key: string }; test: { account_key: string; application_key: string } };
  ca: string;
  http: Agent;
  /** The running processes of each service, in start order. */
  processes: Map<ServiceName, CliProcess[]>;
  /** Starts one more instance and waits until the gateway routes to it. */
  startInstance(service: ServiceName, env?: Record<string, string>): Promise<CliProcess>;
  /** Waits until the gateway's /readyz counts exactly these live instances. */
  waitForInstances(counts: Partial<Record<ServiceName, number>>, limitMs?: number): Promise<void>;
  request(method: string, pathname: string, options?: RequestOptions): Promise<TestResponse>;
  close(): Promise<void>;
}

export interface DeploymentOptions {
  /** Instances per service (default: one of each, two of files and of notifications). */
  instances?: Partial<Record<ServiceName, number>>;
  env?: Record<string, string>;
  /** Receives each line each process writes (stdout and stderr), as it comes: for tests that read the log. */
  output?: (service: ServiceName, line: string) => void;
}

const DEFAULT_INSTANCES: Partial<Record<ServiceName, number>> = { identity: 1, files: 2, notifications: 2, backup: 1, exports: 1, webhooks: 1 };

export async function freePort(): Promise<number> {
  const server = net.createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as net.AddressInfo;
  await new Promise((resolve) => server.close(resolve));
  return port;
}

/**
 * A free port for a gateway, below the kernel's ephemeral range (32768 and up on Linux): the
 * services listen on port 0, and one could otherwise take the port between this check and the
 * gateway's start (seen: EADDRINUSE).
 */
async function gatewayPort(): Promise<number> {
  for (;;) {
    const candidate = 20_000 + Math.floor(Math.random() * 12_000);
    const server = net.createServer();
    const free = await new Promise<boolean>((resolve) => {
      server.once('error', () => resolve(false));
      server.listen(candidate, '127.0.0.1', () => resolve(true));
    });
    if (free) {
      await new Promise((resolve) => server.close(resolve));
      return candidate;
    }
  }
}

export function machineDatabaseUrl(): string {
  const url = new URL(process.env.BANTU_TEST_DATABASE_URL ?? process.env.DATABASE_URL ?? 'postgres://postgres@127.0.0.1:5432/postgres');
  url.pathname = `/bantu_d_${randomBytes(5).toString('hex')}`;
  return url.toString();
}

/** The end of what a process wrote: its errors go to stderr, its log (fatal lines included) to stdout. */
function outputOf(child: CliProcess): string {
  return `${child.stderr()}${child.stdout().slice(-4000)}`;
}

export async function startDeployment(options: DeploymentOptions = {}): Promise<Deployment> {
  const dataDir = await makeTempDir('bantu-dist-');
  const port = await gatewayPort();
  const suffix = randomBytes(4).toString('hex');
  const databaseUrl = machineDatabaseUrl();
  const env: Record<string, string> = {
    DATABASE_URL: databaseUrl,
    NATS_URL: process.env.NATS_URL ?? 'nats://127.0.0.1:4222',
    BANTU_NATS_PREFIX: `t${suffix}`,
    REDIS_URL: process.env.REDIS_URL ?? 'redis://127.0.0.1:6379',
    BANTU_REDIS_PREFIX: `t${suffix}:`,
    BANTU_DATA_DIR: dataDir,
    BANTU_SECRET_KEY: randomBytes(32).toString('base64url'),
    BANTU_OPERATOR_TOKEN: `op_${randomBytes(24).toString('base64url')}`,
    BANTU_PORT: String(port),
    BANTU_PUBLIC_URL: `https://127.0.0.1:${port}`,
    BANTU_LOG_LEVEL: process.env.BANTU_TEST_LOG_LEVEL ?? 'warn',
    // Nine processes, and two test files side by side on the machine PostgreSQL's 100 connections.
    BANTU_DATABASE_POOL_SIZE: '3',
    BANTU_DATABASE_IDLE_MS: String(SHARED_POSTGRES_IDLE_MS),
    ...options.env,
  };
  const processes = new Map<ServiceName, CliProcess[]>();
  const spawn = (service: ServiceName, extra: Record<string, string> = {}) => {
    const child = runCli(['serve', service], { ...env, ...extra });
    if (options.output) {
      const output = options.output;
      for (const stream of [child.child.stdout, child.child.stderr]) {
        let partial = '';
        stream?.on('data', (chunk) => {
          const lines = (partial + chunk).split('\n');
          partial = lines.pop() ?? '';
          for (const line of lines) output(service, line);
        });
        stream?.on('end', () => partial && output(service, partial));
      }
    }
    processes.set(service, [...(processes.get(service) ?? []), child]);
    // A process that fails on its own (not stopped by a signal) is said at once: otherwise a
    // test only sees refused connections, or sockets that end without a reason.
    void child.exited.then(({ code, signal }) => {
      if (code !== 0 && signal === null) process.stderr.write(`bantu serve ${service} exited with code ${code}:\n${outputOf(child)}\n`);
    });
    return child;
  };
  const running = async (child: CliProcess, limitMs = 180_000) => {
    const deadline = Date.now() + limitMs;
    while (!/is running at/.test(child.stdout())) {
      if (child.child.exitCode !== null) throw new Error(`bantu serve exited ${child.child.exitCode}: ${outputOf(child)}`);
      if (Date.now() > deadline) throw new Error(`bantu serve did not start in time: ${outputOf(child)}`);
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
  };

  const close = async () => {
    await http?.close();
    const all = [...processes.values()].flat();
    for (const child of all) if (child.child.exitCode === null && child.child.signalCode === null) child.child.kill('SIGTERM');
    await Promise.all(all.map((child) => child.exited));
    await dropDatabases(databaseUrl).catch(() => undefined);
    await deleteStreams(env.NATS_URL as string, env.BANTU_NATS_PREFIX as string).catch(() => undefined);
    await fs.rm(dataDir, { recursive: true, force: true });
  };

  let http: Agent | undefined;
  try {
    // Identity first: its first start creates tenant `default` and its keys; then the rest side by side.
    await running(spawn('identity'));
    const wanted = { ...DEFAULT_INSTANCES, ...options.instances };
    const rest: CliProcess[] = [spawn('gateway')];
    for (const [service, count] of Object.entries(wanted) as [ServiceName, number][]) {
      for (let i = service === 'identity' ? 1 : 0; i < count; i++) rest.push(spawn(service));
    }
    await Promise.all(rest.map((child) => running(child)));

    const ca = await fs.readFile(path.join(dataDir, 'tls', 'cert.pem'), 'utf8');
    http = new Agent({ connect: { ca }, keepAliveTimeout: 1000 });
    const defaults = JSON.parse(await fs.readFile(path.join(dataDir, 'secrets', 'default-tenant.json'), 'utf8'));
    const url = `https://127.0.0.1:${port}`;
    const agent = http;
    const request = (method: string, pathname: string, requestOptions?: RequestOptions) => requestWith(agent, url, method, pathname, requestOptions);

    const waitForInstances = async (counts: Partial<Record<ServiceName, number>>, limitMs = 30_000) => {
      const deadline = Date.now() + limitMs;
      let last = '';
      for (;;) {
        const ready = await request('GET', '/readyz').catch(() => undefined);
        const services = ready?.json?.services ?? {};
        last = JSON.stringify(services);
        if (Object.entries(counts).every(([name, n]) => services[name]?.instances === n)) return;
        if (Date.now() > deadline) throw new Error(`instances never reached ${JSON.stringify(counts)}: ${last}`);
        await new Promise((resolve) => setTimeout(resolve, 200));
      }
    };
    await waitForInstances(wanted);

    return {
      url,
      dataDir,
      env,
      operatorToken: env.BANTU_OPERATOR_TOKEN as string,
      keys: defaults.keys,
      ca,
      http,
      processes,
      async startInstance(service, extra) {
        const child = spawn(service, extra);
        await running(child);
        return child;
      },
      waitForInstances,
      request,
      close,
    };
  } catch (error) {
    await close();
    throw error;
  }
}

/** The relay's JetStream streams of a test installation, on the machine's NATS: removed with it. */
async function deleteStreams(url: string, prefix: string): Promise<void> {
  const nc = await connect({ servers: url });
  try {
    const jsm = await jetstreamManager(nc);
    for (const environment of ['live', 'test'] as const) await jsm.streams.delete(streamName(prefix, environment)).catch(() => undefined);
  } finally {
    await nc.close();
  }
}
