/**
 * Where one side of a benchmark pair spends the main thread: runs the pair's setup, warm-up
 * rounds of the side, then ROUNDS rounds of it under V8's CPU profiler (node:inspector, in
 * this process), and prints the self time of the heaviest functions and of the packages they
 * belong to, as shares of the profiled time (idle included, so the shares say how busy the
 * thread was too). A side that marks its measured part (`performance.mark` of
 * `bench:window:start` and `bench:window:end`, as webhooks/deliveries does after its setup
 * commit) is profiled within those marks only.
 *
 *   node --import tsx bench/diagnostics/pair-profile.ts webhooks/deliveries [a|b]   # ROUNDS=3 WARMUP=1 TOP=40
 *   PROFILE_OUT=/tmp/a.cpuprofile ...   # also writes the profile (Chrome DevTools opens it)
 */
import fs from 'node:fs/promises';
import { Session } from 'node:inspector/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import type { BenchPair } from '../harness.ts';

const [name, side = 'a'] = process.argv.slice(2);
const ROUNDS = Number(process.env.ROUNDS ?? 3);
const WARMUP = Number(process.env.WARMUP ?? 1);
const TOP = Number(process.env.TOP ?? 40);
if (!name || (side !== 'a' && side !== 'b')) {
  console.error('usage: pair-profile.ts <pair name> [a|b]');
  process.exit(2);
}

interface ProfileNode {
  id: number;
  callFrame: { functionName: string; url: string; lineNumber: number };
  children?: number[];
}
interface Profile {
  nodes: ProfileNode[];
  startTime: number;
  samples: number[];
  timeDeltas: number[];
}

/** The marked windows, in performance.now() milliseconds. */
function markedWindows(): Array<[number, number]> {
  const starts = performance.getEntriesByName('bench:window:start').map((m) => m.startTime);
  const ends = performance.getEntriesByName('bench:window:end').map((m) => m.startTime);
  return starts.map((start, i) => [start, ends[i] ?? Number.POSITIVE_INFINITY]);
}

async function findPair(wanted: string): Promise<BenchPair> {
  const dir = path.dirname(path.dirname(fileURLToPath(import.meta.url)));
  for (const file of (await fs.readdir(dir)).filter((f) => f.endsWith('.bench.ts'))) {
    const { pairs } = (await import(path.join(dir, file))) as { pairs: BenchPair[] };
    const pair = pairs.find((p) => p.name === wanted);
    if (pair) return pair;
  }
  throw new Error(`no pair named ${wanted}`);
}

/** The package a script belongs to (`undici`, `pg`), `node:` for Node's own, or the file under src/ or bench/. */
function ownerOf(url: string): string {
  if (!url) return '(native or idle)';
  if (url.startsWith('node:')) return url;
  const modules = url.lastIndexOf('node_modules/');
  if (modules >= 0) {
    const rest = url.slice(modules + 'node_modules/'.length).split('/');
    return rest[0]?.startsWith('@') ? `${rest[0]}/${rest[1]}` : (rest[0] ?? url);
  }
  const match = /\/((?:src|bench|test)\/.*)$/.exec(url);
  return match?.[1] ?? url;
}

/** `startedAt`: performance.now() when the profiler started, taken as the profile's startTime. */
function summarize(profile: Profile, startedAt: number, windows: Array<[number, number]>): void {
  const byId = new Map(profile.nodes.map((node) => [node.id, node]));
  const selfUs = new Map<number, number>();
  let total = 0;
  let elapsedUs = 0;
  profile.samples.forEach((id, i) => {
    const delta = profile.timeDeltas[i] ?? 0;
    elapsedUs += delta;
    const at = startedAt + elapsedUs / 1000;
    if (windows.length > 0 && !windows.some(([start, end]) => at >= start && at <= end)) return;
    selfUs.set(id, (selfUs.get(id) ?? 0) + delta);
    total += delta;
  });
  const functions = new Map<string, number>();
  const owners = new Map<string, number>();
  for (const [id, us] of selfUs) {
    const frame = (byId.get(id) as ProfileNode).callFrame;
    const owner = ownerOf(frame.url);
    const key = `${frame.functionName || '(anonymous)'}  ${owner}:${frame.lineNumber + 1}`;
    functions.set(key, (functions.get(key) ?? 0) + us);
    owners.set(owner, (owners.get(owner) ?? 0) + us);
  }
  const share = (us: number) => `${((100 * us) / total).toFixed(1).padStart(5)}%`;
  console.log(`\nprofiled ${(total / 1000).toFixed(0)} ms of the main thread${windows.length > 0 ? `, in ${windows.length} marked windows` : ''}`);
  console.log('\nby package or file (self time):');
  for (const [owner, us] of [...owners].sort((a, b) => b[1] - a[1]).slice(0, TOP)) console.log(`  ${share(us)}  ${owner}`);
  console.log('\nby function (self time):');
  for (const [key, us] of [...functions].sort((a, b) => b[1] - a[1]).slice(0, TOP)) console.log(`  ${share(us)}  ${key}`);
}

const pair = await findPair(name);
const ctx = await pair.setup();
const session = new Session();
session.connect();
try {
  const run = side === 'a' ? pair.a : pair.b;
  for (let i = 0; i < WARMUP; i++) await run(ctx);
  await session.post('Profiler.enable');
  await session.post('Profiler.setSamplingInterval', { interval: 200 });
  performance.clearMarks();
  await session.post('Profiler.start');
  const startedAt = performance.now();
  const figures: number[] = [];
  for (let i = 0; i < ROUNDS; i++) figures.push(await run(ctx));
  const { profile } = (await session.post('Profiler.stop')) as unknown as { profile: Profile };
  console.log(`${pair.name} side ${side}: ${figures.map((f) => f.toFixed(1)).join(', ')} ${pair.unit} (under the profiler: slower than the benchmark)`);
  if (process.env.PROFILE_OUT) await fs.writeFile(process.env.PROFILE_OUT, JSON.stringify({ ...profile, windows: markedWindows(), startedAt }));
  summarize(profile, startedAt, markedWindows());
} finally {
  session.disconnect();
  await pair.teardown(ctx);
}
