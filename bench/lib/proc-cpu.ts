import fs from 'node:fs';

/**
 * CPU time of this process's threads and of its descendant processes (the embedded
 * PostgreSQL runs as our child and grandchildren), read from /proc. Linux only: elsewhere
 * every figure is 0. Resolution is the kernel's tick (USER_HZ, 10 ms), so measure runs of
 * seconds, not single requests.
 */
const TICK_MS = 1000 / 100; // USER_HZ: /proc reports CPU time in 1/100 s

/** CPU milliseconds used so far by one thread or process, from its stat line (utime + stime). */
export function cpuMs(statFile: string): number {
  try {
    const stat = fs.readFileSync(statFile, 'utf8');
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return (Number(fields[11]) + Number(fields[12])) * TICK_MS;
  } catch {
    return 0; // it ended between the listing and the read
  }
}

/** CPU milliseconds of each thread of `pid`, by thread id. */
export function threadsOf(pid: number): Map<number, number> {
  const out = new Map<number, number>();
  for (const tid of fs.readdirSync(`/proc/${pid}/task`)) out.set(Number(tid), cpuMs(`/proc/${pid}/task/${tid}/stat`));
  return out;
}

/** Every process below `root`. */
export function descendants(root: number): number[] {
  const children = new Map<number, number[]>();
  for (const entry of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const stat = fs.readFileSync(`/proc/${entry}/stat`, 'utf8');
      const ppid = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
      children.set(ppid, [...(children.get(ppid) ?? []), Number(entry)]);
    } catch {}
  }
  const out: number[] = [];
  const walk = (pid: number) => {
    for (const child of children.get(pid) ?? []) {
      out.push(child);
      walk(child);
    }
  };
  walk(root);
  return out;
}

/** CPU used between two readings by the given ids (a thread or process that ended in between is missing its last moments). */
export function used(start: Map<number, number>, end: Map<number, number>, ids: Iterable<number>): number {
  let sum = 0;
  for (const id of ids) sum += (end.get(id) ?? 0) - (start.get(id) ?? 0);
  return Math.max(0, sum);
}

export interface CpuSplit {
  /** This process's main thread: where both servers of a pair run their JavaScript. */
  main: number;
  /** This process's other threads but the excluded ones: libuv's pool (file system, crypto), V8's helpers. */
  threads: number;
  /** The descendant processes: the embedded PostgreSQL. */
  postgres: number;
}

/**
 * Starts a reading; the function it returns gives the CPU milliseconds used since, split as
 * CpuSplit. `exclude` are threads of this process left out (a load generator's thread).
 */
export function cpuSince(exclude: ReadonlySet<number> = new Set()): () => CpuSplit {
  if (process.platform !== 'linux') return () => ({ main: 0, threads: 0, postgres: 0 });
  const startThreads = threadsOf(process.pid);
  const startProcesses = new Map(descendants(process.pid).map((pid) => [pid, cpuMs(`/proc/${pid}/stat`)]));
  return () => {
    const endThreads = threadsOf(process.pid);
    const endProcesses = new Map(descendants(process.pid).map((pid) => [pid, cpuMs(`/proc/${pid}/stat`)]));
    const others = [...endThreads.keys()].filter((tid) => tid !== process.pid && !exclude.has(tid));
    return {
      main: used(startThreads, endThreads, [process.pid]),
      threads: used(startThreads, endThreads, others),
      postgres: used(startProcesses, endProcesses, endProcesses.keys()),
    };
  };
}

/**
 * CPU milliseconds every core of the machine has spent busy so far (user, nice, system, irq,
 * softirq, steal; not idle, not iowait), from /proc/stat: what the cores did in all, ours
 * and anyone else's. 0 off Linux.
 */
export function machineBusyMs(): number {
  try {
    const line = fs.readFileSync('/proc/stat', 'utf8').split('\n', 1)[0] ?? '';
    const [user, nice, system, , , irq, softirq, steal] = line.trim().split(/\s+/).slice(1).map(Number);
    return [user, nice, system, irq, softirq, steal].reduce<number>((sum, v) => sum + (v ?? 0), 0) * TICK_MS;
  } catch {
    return 0;
  }
}

/** Pids of every running process whose command name (/proc/<pid>/comm) is `name`. */
export function pidsNamed(name: string): number[] {
  const out: number[] = [];
  for (const entry of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      if (fs.readFileSync(`/proc/${entry}/comm`, 'utf8').trim() === name) out.push(Number(entry));
    } catch {}
  }
  return out;
}

export interface GroupCpu {
  /** CPU milliseconds of each group over the reading. */
  groups: Record<string, number>;
  /** CPU milliseconds the whole machine spent busy over the reading (machineBusyMs). */
  machine: number;
  /** Wall-clock milliseconds of the reading. */
  elapsedMs: number;
}

/**
 * Starts a reading of named groups of stat files (`/proc/<pid>/stat` counts every thread of a
 * process, `/proc/<pid>/task/<tid>/stat` one thread); the function it returns gives the CPU
 * each group used since, next to what the whole machine did and the time it took. A file
 * that appears only at the end counts from zero (a process started during the reading).
 */
export function cpuOfGroups(groups: Record<string, readonly string[]>): (end?: Record<string, readonly string[]>) => GroupCpu {
  const read = (files: Record<string, readonly string[]>) => new Map(Object.values(files).flat().map((file) => [file, cpuMs(file)]));
  const start = read(groups);
  const machineStart = machineBusyMs();
  const started = performance.now();
  return (endGroups = groups) => {
    const elapsedMs = performance.now() - started;
    const end = read(endGroups);
    const machine = machineBusyMs() - machineStart;
    const out: Record<string, number> = {};
    for (const [name, files] of Object.entries(endGroups)) {
      out[name] = files.reduce((sum, file) => sum + Math.max(0, (end.get(file) ?? 0) - (start.get(file) ?? 0)), 0);
    }
    return { groups: out, machine, elapsedMs };
  };
}
