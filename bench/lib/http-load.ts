import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { Worker } from 'node:worker_threads';

/**
 * An HTTPS load generator on a worker thread, for throughput pairs. The servers under test
 * stay on the main thread; the client gets its own event loop, so on a 2-core machine the
 * client and the server each have a core and neither side's cost leaks into the other's.
 *
 *   const load = await startLoad({ ca });
 *   const { elapsedMs } = await load.run({ origin, path: '/healthz', count: 20_000, concurrency: 32 });
 *   await load.close();
 *
 * Requests go through one keep-alive undici Pool per origin with `concurrency` connections
 * and that many requests in flight. Any unexpected status fails the run; the first response's
 * body comes back as `sample`, so a pair can check that a side answered what it should.
 */
export interface LoadRun {
  origin: string;
  path: string;
  method?: string;
  headers?: Record<string, string>;
  /** A string or bytes sent with every request (kept small: it is copied to the worker). */
  body?: string | Uint8Array;
  count: number;
  concurrency: number;
  /** Default 200. */
  expectStatus?: number;
  /**
   * Every `{n}` in `path` and in a string `body` becomes a number unique for the life of the
   * load generator (12 digits, zero-padded, so the body's length stays the same): for creates,
   * which need a name (and content) of their own per request.
   */
  numbered?: boolean;
}

export interface LoadResult {
  elapsedMs: number;
  /** Bytes of every response body. */
  bytes: number;
  /** The body of the run's first response, to check what the server answered. */
  sample: string;
}

export interface LoadGenerator {
  run(options: LoadRun): Promise<LoadResult>;
  /** The load thread's OS thread id (Linux; undefined elsewhere), to read its CPU time in /proc. */
  threadId(): Promise<number | undefined>;
  close(): Promise<void>;
}

const workerFile = path.join(path.dirname(fileURLToPath(import.meta.url)), 'load-worker.mjs');

export async function startLoad(options: { ca: string }): Promise<LoadGenerator> {
  const worker = new Worker(workerFile, { workerData: { ca: options.ca } });
  const waiting = new Map<number, { resolve: (value: unknown) => void; reject: (error: Error) => void }>();
  let nextId = 0;
  worker.on('message', (message: { id: number; ok: boolean; value?: unknown; error?: string }) => {
    const pending = waiting.get(message.id);
    waiting.delete(message.id);
    if (message.ok) pending?.resolve(message.value);
    else pending?.reject(new Error(message.error));
  });
  worker.on('error', (error) => {
    for (const pending of waiting.values()) pending.reject(error);
    waiting.clear();
  });
  const call = <T>(op: string, args?: unknown) =>
    new Promise<T>((resolve, reject) => {
      const id = nextId++;
      waiting.set(id, { resolve: (value) => resolve(value as T), reject });
      worker.postMessage({ id, op, args });
    });
  return {
    run: (run) => call('run', run),
    threadId: () => call('thread-id'),
    async close() {
      await call('close');
      await worker.terminate();
    },
  };
}
