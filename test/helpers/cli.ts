import { type ChildProcess, spawn } from 'node:child_process';
import path from 'node:path';

/**
 * Runs the real `bantu` CLI as a child process (the way `npm start` does), for tests of
 * what only a process shows: exit codes, signals, a second instance, kill -9.
 */
const BIN = path.join(import.meta.dirname, '..', '..', 'bin', 'bantu.js');

/**
 * Every child still running. A test process that ends anyhow (a test timeout, a crash, a
 * signal) takes them with it: an orphan would keep its ports, database connections and
 * registry entries, and slow every test after it.
 */
const running = new Set<ChildProcess>();
const killAll = () => {
  for (const child of running) child.kill('SIGKILL');
};
process.once('exit', killAll);
for (const signal of ['SIGTERM', 'SIGINT', 'SIGHUP'] as const) {
  process.once(signal, () => {
    killAll();
    process.exit(128 + (signal === 'SIGTERM' ? 15 : signal === 'SIGINT' ? 2 : 1));
  });
}

export interface CliProcess {
  child: ChildProcess;
  stdout(): string;
  stderr(): string;
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  /** Resolves with the HTTPS URL once the banner is printed. */
  ready(limitMs?: number): Promise<string>;
}

export function runCli(args: string[], env: Record<string, string | undefined>, options: { cwd?: string } = {}): CliProcess {
  const childEnv: Record<string, string> = {};
  for (const [name, value] of Object.entries({ ...process.env, BANTU_LOG_LEVEL: 'warn', ...env })) {
    // The machine run sets these for in-process servers; a CLI test chooses its own.
    if (value !== undefined && name !== 'BANTU_TEST_DATABASE_URL') childEnv[name] = value;
  }
  if (!('DATABASE_URL' in env)) delete childEnv.DATABASE_URL;
  const child = spawn(process.execPath, [BIN, ...args], { env: childEnv, cwd: options.cwd, stdio: ['ignore', 'pipe', 'pipe'] });
  running.add(child);
  child.once('exit', () => running.delete(child));
  let out = '';
  let err = '';
  child.stdout?.on('data', (chunk) => (out += chunk));
  child.stderr?.on('data', (chunk) => (err += chunk));
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) =>
    child.once('exit', (code, signal) => resolve({ code, signal })),
  );
  return {
    child,
    stdout: () => out,
    stderr: () => err,
    exited,
    // A hang guard, not a speed check: a start on a loaded 2-core machine (tsx compiling) can take a minute.
    async ready(limitMs = 180_000) {
      const deadline = Date.now() + limitMs;
      while (Date.now() < deadline) {
        const match = /is running at (https:\/\/\S+)/.exec(out);
        if (match?.[1]) return match[1];
        if (child.exitCode !== null) throw new Error(`bantu exited with ${child.exitCode}: ${err}`);
        await new Promise((resolve) => setTimeout(resolve, 50));
      }
      throw new Error(`bantu did not start in time: ${err}`);
    },
  };
}
