/**
 * Where a login's CPU goes, next to the bare argon2id verification it is benchmarked against
 * (identity/login in bench/identity.bench.ts). Linux only: it reads per-thread CPU time from
 * /proc while the same load as the benchmark runs.
 *
 *   node --import tsx bench/diagnostics/login-cpu.ts     # LOGINS=300 CONCURRENCY=4 ROUNDS=3 WARMUP=1
 *
 * For each side it prints milliseconds of CPU per login (per verification) by thread group:
 * the argon2 threads (libuv's pool), the main thread (HTTPS, Fastify, pg, the login itself),
 * the load client's thread, V8's helper threads (garbage collection, compilation), the
 * embedded PostgreSQL, and what the two cores spent elsewhere (idle, or other processes).
 * The benchmark's ratio is about (bare total) / (login total).
 *
 * The load is the benchmark's: the worker-thread HTTPS client (bench/lib/http-load.ts) and
 * the same number in flight. WARMUP (default 1) measurements of logins run first, unreported.
 */
import os from 'node:os';
import { hash, verify } from '@node-rs/argon2';
import { ARGON2_OPTIONS } from '../../src/services/identity/domain/passwords.ts';
import { startServer } from '../../test/helpers/server.ts';
import { runConcurrent } from '../harness.ts';
import { startLoad } from '../lib/http-load.ts';
import { cpuMs, descendants, threadsOf, used } from '../lib/proc-cpu.ts';

const LOGINS = Number(process.env.LOGINS ?? 300);
const CONCURRENCY = Number(process.env.CONCURRENCY ?? 4);
const ROUNDS = Number(process.env.ROUNDS ?? 3);
const PASSWORD = 'benchmark password 1';

if (process.platform !== 'linux') {
  console.error('login-cpu reads /proc: Linux only');
  process.exit(2);
}

interface Snapshot {
  at: number;
  threads: Map<number, number>;
  processes: Map<number, number>;
}

function snapshot(): Snapshot {
  const processes = new Map(descendants(process.pid).map((pid) => [pid, cpuMs(`/proc/${pid}/stat`)]));
  return { at: performance.now(), threads: threadsOf(process.pid), processes };
}

interface Split {
  perSecond: number;
  groups: Record<'argon2' | 'main' | 'client' | 'v8 helpers' | 'postgres' | 'elsewhere', number>;
}

/** CPU per operation by group between two snapshots; `pool` are the argon2 threads, `client` the load thread. */
function split(start: Snapshot, end: Snapshot, operations: number, pool: Set<number>, client: number | undefined): Split {
  const groups = { argon2: 0, main: 0, client: 0, 'v8 helpers': 0, postgres: 0, elsewhere: 0 };
  let ours = 0;
  for (const tid of end.threads.keys()) {
    const ms = used(start.threads, end.threads, [tid]);
    ours += ms;
    const group: keyof typeof groups = tid === process.pid ? 'main' : pool.has(tid) ? 'argon2' : tid === client ? 'client' : 'v8 helpers';
    groups[group] += ms;
  }
  groups.postgres = used(start.processes, end.processes, end.processes.keys());
  ours += groups.postgres;
  const elapsed = end.at - start.at;
  groups.elsewhere = Math.max(0, os.availableParallelism() * elapsed - ours);
  for (const key of Object.keys(groups) as (keyof typeof groups)[]) groups[key] /= operations;
  return { perSecond: (operations / elapsed) * 1000, groups };
}

function show(label: string, result: Split): void {
  const total = Object.values(result.groups).reduce((a, b) => a + b, 0);
  const parts = Object.entries(result.groups).map(([name, ms]) => `${name} ${ms.toFixed(2)}`);
  console.log(`  ${label.padEnd(6)} ${result.perSecond.toFixed(1).padStart(6)}/s  CPU ms per op: ${parts.join(', ')} (all ${total.toFixed(2)})`);
}

const bantu = await startServer({ BANTU_LOG_LEVEL: 'silent' });
const load = await startLoad({ ca: bantu.ca });
try {
  const appKey = bantu.keys.test.application_key;
  const registered = await bantu.request('POST', '/v1/auth/register', { basic: appKey, json: { email: 'bench@example.com', password: PASSWORD, name: 'Bench' } });
  if (registered.status !== 201) throw new Error(`register: ${registered.status} ${registered.text}`);
  const passwordHash = await hash(PASSWORD, ARGON2_OPTIONS);
  const clientTid = await load.threadId();
  const logins = () =>
    load.run({
      origin: bantu.url,
      path: '/v1/auth/login',
      method: 'POST',
      headers: { authorization: `Bearer ${appKey}`, 'content-type': 'application/json' },
      body: JSON.stringify({ email: 'bench@example.com', password: PASSWORD }),
      count: LOGINS,
      concurrency: CONCURRENCY,
    });
  const verifications = () =>
    runConcurrent(LOGINS, CONCURRENCY, async () => {
      if (!(await verify(passwordHash, PASSWORD))) throw new Error('verify failed');
    });

  // Warm-up; the threads that work during bare verifications are libuv's pool (argon2).
  for (let i = 0; i < Number(process.env.WARMUP ?? 1); i++) await logins();
  const before = snapshot();
  await verifications();
  const after = snapshot();
  const bareUse = [...after.threads.keys()].filter((tid) => tid !== process.pid).map((tid) => [tid, used(before.threads, after.threads, [tid])] as const);
  const busiest = Math.max(...bareUse.map(([, ms]) => ms));
  const pool = new Set(bareUse.filter(([, ms]) => ms >= busiest / 4).map(([tid]) => tid));

  console.log(`identity/login CPU split: ${LOGINS} per measurement, ${CONCURRENCY} in flight, ${os.availableParallelism()} cores`);
  for (let round = 1; round <= ROUNDS; round++) {
    console.log(`round ${round}/${ROUNDS}`);
    let start = snapshot();
    await logins();
    const login = split(start, snapshot(), LOGINS, pool, clientTid);
    start = snapshot();
    await verifications();
    const bare = split(start, snapshot(), LOGINS, pool, clientTid);
    show('login', login);
    show('bare', bare);
    console.log(`  ratio ${(login.perSecond / bare.perSecond).toFixed(3)}`);
  }
} finally {
  await load.close();
  await bantu.close();
}
