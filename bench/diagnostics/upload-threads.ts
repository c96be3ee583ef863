/**
 * Where a 100 MiB upload's CPU goes, thread by thread: A through the gateway to one files
 * process (each its own `bantu serve`), B to `bantu start`, the same deployment as the
 * distributed/upload-100mib pair. Linux only: it reads each thread's CPU time from /proc.
 *
 *   node --import tsx bench/diagnostics/upload-threads.ts     # SIDES=a,b,a N=5 DELAY=0
 *
 * For each measurement it prints the rate and, per process, milliseconds of CPU per MiB of
 * each thread that used any: `main` is the event loop; the others are V8's helpers (garbage
 * collection), libuv's pool (file writes) and the hashing thread, by thread id. DELAY waits
 * that long after printing the pids, to attach strace or perf before the uploads start.
 */
import { randomBytes } from 'node:crypto';
import fs from 'node:fs/promises';
import path from 'node:path';
import { newest, startFilesDeployment, startReference } from '../lib/distributed.ts';
import { send } from '../lib/transfer.ts';

const MiB = 1024 * 1024;
const BIG = 100 * MiB;
const N = Number(process.env.N ?? 5);
const SIDES = (process.env.SIDES ?? 'a,b,a').split(',') as Array<'a' | 'b'>;
const CLOCK_TICK_MS = 10;

/** CPU milliseconds so far of each thread of `pid`: `main`, or `<name>:<tid>`. */
async function threadCpu(pid: number): Promise<Map<string, number>> {
  const out = new Map<string, number>();
  for (const tid of await fs.readdir(`/proc/${pid}/task`)) {
    const stat = await fs.readFile(`/proc/${pid}/task/${tid}/stat`, 'utf8').catch(() => undefined);
    if (!stat) continue; // the thread ended
    const name = tid === String(pid) ? 'main' : `${stat.slice(stat.indexOf('(') + 1, stat.lastIndexOf(')'))}:${tid}`;
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    out.set(name, (Number(fields[11]) + Number(fields[12])) * CLOCK_TICK_MS);
  }
  return out;
}

function perMiB(before: Map<string, number>, after: Map<string, number>, mib: number): string {
  return [...after]
    .map(([name, ms]) => [name, (ms - (before.get(name) ?? 0)) / mib] as const)
    .filter(([, ms]) => ms > 0)
    .sort((x, y) => y[1] - x[1])
    .map(([name, ms]) => `${name}=${ms.toFixed(2)}`)
    .join(' ');
}

const deployment = await startFilesDeployment(1);
const tls = { certFile: path.join(deployment.dataDir, 'tls', 'cert.pem'), keyFile: path.join(deployment.dataDir, 'tls', 'key.pem') };
const reference = await startReference(tls);
const client = { ca: deployment.ca, chunk: randomBytes(MiB) };
let seq = 0;
try {
  console.log(`pids: gateway ${newest(deployment, 'gateway').child.pid}, files ${newest(deployment, 'files').child.pid}, bantu start ${reference.cli.child.pid}`);
  await new Promise((resolve) => setTimeout(resolve, Number(process.env.DELAY ?? 0)));
  for (const side of SIDES) {
    const origin = side === 'a' ? deployment.url : reference.url;
    const key = side === 'a' ? deployment.keys.test.account_key : reference.keys.test.account_key;
    const pids: Record<string, number> =
      side === 'a'
        ? { gateway: newest(deployment, 'gateway').child.pid as number, files: newest(deployment, 'files').child.pid as number }
        : { 'bantu start': reference.cli.child.pid as number };
    const before = new Map(await Promise.all(Object.entries(pids).map(async ([name, pid]) => [name, await threadCpu(pid)] as const)));
    const started = performance.now();
    for (let i = 0; i < N; i++) {
      const answer = await send(client, 'POST', `${origin}/v1/files?name=threads-${seq++}.bin`, BIG, { auth: key });
      if (answer.status !== 201) throw new Error(`${side}: ${answer.status} ${answer.body}`);
    }
    const seconds = (performance.now() - started) / 1000;
    console.log(`${side}: ${((N * BIG) / MiB / seconds).toFixed(0)} MiB/s`);
    for (const [name, pid] of Object.entries(pids)) {
      console.log(`  ${name}, CPU ms per MiB: ${perMiB(before.get(name) as Map<string, number>, await threadCpu(pid), (N * BIG) / MiB)}`);
    }
  }
} finally {
  await reference.close();
  await deployment.close();
}
