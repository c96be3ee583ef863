import { createHash, randomBytes } from 'node:crypto';
import fs from 'node:fs/promises';
import net from 'node:net';
import path from 'node:path';

/**
 * The data dir holds everything an embedded Bantu keeps: the database, blobs, secrets
 * and mail. This module owns its layout, its single-owner lock and its secret files.
 */
export function dataPath(dataDir: string, ...parts: string[]): string {
  return path.join(dataDir, ...parts);
}

export class DataDirLockedError extends Error {}

/** True when a process with this pid exists (EPERM: it exists but belongs to another user). */
export function isProcessAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/**
 * Takes the data dir for this process. A second Bantu on the same dir fails at once;
 * a lock left by a process that died (kill -9, power loss) is no obstacle.
 * Returns the function that releases the lock.
 *
 * The lock itself is a Unix socket in Linux's abstract namespace, named after the data
 * dir's real path: binding it is atomic, and the kernel releases it when the process dies,
 * so two starts racing each other cannot both win and nothing stale is ever left. The
 * `bantu.lock` file beside it only records the owner's pid for the message. Elsewhere
 * than Linux, the file alone is the lock (exclusive create; a dead owner's is taken over).
 */
export async function lockDataDir(dataDir: string): Promise<() => Promise<void>> {
  await fs.mkdir(dataDir, { recursive: true, mode: 0o755 });
  const lockFile = dataPath(dataDir, 'bantu.lock');
  const refuse = async (): Promise<never> => {
    const owner = Number.parseInt(await fs.readFile(lockFile, 'utf8').catch(() => ''), 10);
    throw new DataDirLockedError(
      `Another Bantu${Number.isInteger(owner) ? ` (pid ${owner})` : ''} is already running on the data dir ${dataDir}. Stop it first, or set BANTU_DATA_DIR to another folder.`,
    );
  };

  if (process.platform === 'linux') {
    const name = `\0bantu-data-dir-${createHash('sha256').update(await fs.realpath(dataDir)).digest('hex').slice(0, 32)}`;
    const lock = net.createServer();
    try {
      await new Promise<void>((resolve, reject) => {
        lock.once('error', reject);
        lock.listen({ path: name }, () => resolve());
      });
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code === 'EADDRINUSE') return refuse();
      throw error;
    }
    lock.unref(); // holding the lock must not keep the process alive
    await writeOwner(lockFile);
    return async () => {
      await fs.rm(lockFile, { force: true });
      await new Promise<void>((resolve) => lock.close(() => resolve()));
    };
  }

  for (let attempt = 0; attempt < 3; attempt++) {
    try {
      const handle = await fs.open(lockFile, 'wx', 0o644);
      await handle.writeFile(`${process.pid}\n`);
      await handle.close();
      return async () => {
        await fs.rm(lockFile, { force: true });
      };
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== 'EEXIST') throw error;
      const owner = Number.parseInt(await fs.readFile(lockFile, 'utf8').catch(() => ''), 10);
      if (Number.isInteger(owner) && owner !== process.pid && isProcessAlive(owner)) return refuse();
      await fs.rm(lockFile, { force: true }); // the owner is gone: the lock is stale
    }
  }
  throw new DataDirLockedError(`Could not take the lock ${lockFile}`);
}

/** Records this process as the data dir's owner, atomically (a reader never sees half a pid). */
async function writeOwner(lockFile: string): Promise<void> {
  const temp = `${lockFile}.${process.pid}.tmp`;
  await fs.writeFile(temp, `${process.pid}\n`, { mode: 0o644 });
  await fs.rename(temp, lockFile);
}

/** Writes a file readable by its owner only (0600), atomically. */
export async function writeSecretFile(file: string, content: string): Promise<void> {
  await fs.mkdir(path.dirname(file), { recursive: true, mode: 0o700 });
  const temp = `${file}.${process.pid}.tmp`;
  await fs.writeFile(temp, content, { mode: 0o600 });
  await fs.rename(temp, file);
}

/** Reads a secret from the data dir, making and saving it first if it does not exist. */
export async function readOrCreateSecret(file: string, make: () => string = () => randomBytes(32).toString('base64url')): Promise<{ value: string; created: boolean }> {
  try {
    return { value: (await fs.readFile(file, 'utf8')).trim(), created: false };
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== 'ENOENT') throw error;
    const value = make();
    await writeSecretFile(file, `${value}\n`);
    return { value, created: true };
  }
}
