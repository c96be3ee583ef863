import { randomBytes } from 'node:crypto';
import fs from 'node:fs/promises';
import path from 'node:path';
import pg from 'pg';
import { Agent } from 'undici';
import { dropDatabases } from '../../src/adapters/db/pg.ts';
import type { ServiceName } from '../../src/platform/catalogue.ts';
import { type CliProcess, runCli } from '../../test/helpers/cli.ts';
import { type Deployment, machineDatabaseUrl, startDeployment } from '../../test/helpers/distributed.ts';
import { makeTempDir, type RequestOptions, requestWith, type TestResponse } from '../../test/helpers/server.ts';
import { median } from '../harness.ts';
import { type GroupCpu, pidsNamed } from './proc-cpu.ts';
import { stopChild } from './transfer.ts';

/**
 * What the distributed pairs (bench/distributed.bench.ts) run against each other: a
 * deployment of `bantu serve` processes (test/helpers/distributed.ts: identity, gateway and
 * the files instances asked for; no notifications, no backup) and the in-process reference,
 * one `bantu start` process on the same machine's PostgreSQL (a database of its own), the
 * same Redis (a prefix of its own), the same certificate and log level, backup worker off.
 * Both sides are child processes and the client is the bench process, so the only difference
 * between them is the hop from the gateway to the files process and what that process costs.
 */
export const LOG_LEVEL = 'warn';

export interface Reference {
  cli: CliProcess;
  url: string;
  dataDir: string;
  databaseUrl: string;
  keys: { test: { account_key: string; application_key: string } };
  request(method: string, pathname: string, options?: RequestOptions): Promise<TestResponse>;
  /** Stops the process and starts a fresh one on the same data dir and database (cold memory). */
  restart(): Promise<void>;
  close(): Promise<void>;
}

/** One `bantu start` with DATABASE_URL and REDIS_URL, serving the given certificate (the deployment's). */
export async function startReference(tls: { certFile: string; keyFile: string }): Promise<Reference> {
  const dataDir = await makeTempDir('bantu-bench-ref-');
  const databaseUrl = machineDatabaseUrl();
  const env = {
    DATABASE_URL: databaseUrl,
    REDIS_URL: process.env.REDIS_URL ?? 'redis://127.0.0.1:6379',
    BANTU_REDIS_PREFIX: `b${randomBytes(4).toString('hex')}:`,
    BANTU_DATA_DIR: dataDir,
    BANTU_PORT: '0',
    BANTU_TLS_CERT: tls.certFile,
    BANTU_TLS_KEY: tls.keyFile,
    BANTU_LOG_LEVEL: LOG_LEVEL,
    BANTU_BACKUP_WORKER: 'off',
  };
  const http = new Agent({ connect: { ca: await fs.readFile(tls.certFile, 'utf8') }, keepAliveTimeout: 1000 });
  let cli = runCli(['start'], env);
  const close = async () => {
    await http.close();
    await stopChild(cli.child);
    await dropDatabases(databaseUrl).catch(() => undefined);
    await fs.rm(dataDir, { recursive: true, force: true });
  };
  try {
    const url = await cli.ready(120_000);
    const tenant = JSON.parse(await fs.readFile(path.join(dataDir, 'secrets', 'default-tenant.json'), 'utf8'));
    const reference: Reference = {
      cli,
      url,
      dataDir,
      databaseUrl,
      keys: tenant.keys,
      request: (method, pathname, options) => requestWith(http, reference.url, method, pathname, options),
      async restart() {
        await stopChild(cli.child);
        cli = runCli(['start'], env);
        reference.cli = cli;
        reference.url = await cli.ready(120_000);
      },
      close,
    };
    return reference;
  } catch (error) {
    await close();
    throw error;
  }
}

/** A deployment of identity, gateway and `files` files instances (test/helpers/distributed.ts). */
export function startFilesDeployment(files: number): Promise<Deployment> {
  return startDeployment({ instances: { identity: 1, files, notifications: 0, backup: 0 }, env: { BANTU_LOG_LEVEL: LOG_LEVEL } });
}

/** The newest process of a service (the one a restart started). */
export function newest(deployment: Deployment, service: ServiceName): CliProcess {
  const all = deployment.processes.get(service) ?? [];
  const child = all[all.length - 1];
  if (!child) throw new Error(`no ${service} process`);
  return child;
}

/** The running processes of a service. */
export function running(deployment: Deployment, service: ServiceName): CliProcess[] {
  return (deployment.processes.get(service) ?? []).filter((p) => p.child.exitCode === null && p.child.signalCode === null);
}

/**
 * Replaces the deployment's gateway and files processes by fresh ones (cold memory), the
 * gateway on the same port; resolves once the new gateway routes to the new files instance.
 */
export async function restartGatewayAndFiles(deployment: Deployment): Promise<void> {
  for (const old of [...running(deployment, 'gateway'), ...running(deployment, 'files')]) await stopChild(old.child);
  await Promise.all([deployment.startInstance('files'), deployment.startInstance('gateway')]);
  await deployment.waitForInstances({ files: 1 }, 60_000);
}

/**
 * The PostgreSQL backends serving one installation's databases (its control database and
 * `_live`, `_test`), as stat files, from pg_stat_activity: the machine's PostgreSQL serves
 * others too, whose backends must not count.
 */
export async function backendStats(admin: pg.Client, databaseUrl: string): Promise<string[]> {
  const name = new URL(databaseUrl).pathname.slice(1);
  const { rows } = await admin.query<{ pid: number }>('select pid from pg_stat_activity where datname = $1 or datname like $2', [name, `${name}\\_%`]);
  return rows.map((row) => `/proc/${row.pid}/stat`);
}

/** A client of the machine's PostgreSQL (database `postgres`), to list backends. */
export async function adminClient(databaseUrl: string): Promise<pg.Client> {
  const url = new URL(databaseUrl);
  url.pathname = '/postgres';
  const client = new pg.Client({ connectionString: url.toString() });
  await client.connect();
  return client;
}

/** The machine's Redis server, shared with whoever else uses it: its CPU says what Redis did for everyone. */
export function redisStats(): string[] {
  return pidsNamed('redis-server').map((pid) => `/proc/${pid}/stat`);
}

/** One side's CPU over a measurement, per group, with what the rest of the machine did (busy minus every group). */
export interface SideCpu extends GroupCpu {
  /** Parts of a group, shown but not added to the sum (each files instance of "files"). */
  detail: Record<string, number>;
  /** Work done in the measurement (requests, MiB): figures are per this unit. */
  work: number;
}

/**
 * Notes from the CPU readings of one side's rounds: per group, the median CPU per unit of
 * work and the median share of one core it kept busy ("0.41 ms/req, 63% of a core"), then
 * the rest of the machine (other processes: on this box, another helper's tests) and every
 * core's busy share.
 */
export function cpuNotes(label: string, rounds: readonly SideCpu[], per: string): Record<string, string> {
  if (rounds.length === 0) return {};
  const text = (values: (r: SideCpu) => number) => {
    const perWork = median(rounds.map((r) => values(r) / r.work));
    const core = median(rounds.map((r) => values(r) / r.elapsedMs));
    return `${perWork.toPrecision(3)} ms/${per}, ${Math.round(core * 100)}% of a core`;
  };
  const notes: Record<string, string> = {};
  for (const group of Object.keys(rounds[0]?.groups ?? {})) notes[`${label} ${group}`] = text((r) => r.groups[group] ?? 0);
  for (const part of Object.keys(rounds[0]?.detail ?? {})) notes[`${label} ${part}`] = text((r) => r.detail[part] ?? 0);
  const ours = (r: SideCpu) => Object.values(r.groups).reduce((sum, v) => sum + v, 0);
  notes[`${label} rest of the machine`] = text((r) => Math.max(0, r.machine - ours(r)));
  notes[`${label} all ours`] = text(ours);
  notes[`${label} all cores busy`] = `${Math.round(median(rounds.map((r) => r.machine / r.elapsedMs)) * 100)}% of one core (2 cores = 200%)`;
  return notes;
}

/**
 * The ratio the pair would show if both sides were bound by the machine's CPU alone: B's CPU
 * per unit of work over A's, every process of the side and the client counted. On a machine
 * shared with other load, it moves less than the rates do (it does not depend on how much of
 * the cores the other load left), so it is the figure to set next to a noisy ratio.
 */
export function cpuBoundRatio(a: readonly SideCpu[], b: readonly SideCpu[]): number {
  const perUnit = (rounds: readonly SideCpu[]) => median(rounds.map((r) => Object.values(r.groups).reduce((sum, v) => sum + v, 0) / r.work));
  return perUnit(b) / perUnit(a);
}
