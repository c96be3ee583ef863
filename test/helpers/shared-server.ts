import { after } from 'node:test';
import { startServer, type TestServer } from './server.ts';
import { distributed } from './shape.ts';

/**
 * For a file whose describe blocks each start a server with the same env. In-process each block
 * still gets one of its own; in the distributed shape, where a deployment costs half a minute,
 * they share one: the first `start()` starts it, the blocks' `close()` leave it running, and it
 * closes after the file's last test. Call it at the top level of the file (it registers that hook).
 */
export function sharedWhenDistributed(env: Record<string, string> = {}): { start(): Promise<TestServer> } {
  if (!distributed) return { start: () => startServer(env) };
  let shared: Promise<TestServer> | undefined;
  after(async () => (await shared?.catch(() => undefined))?.close());
  return {
    async start() {
      shared ??= startServer(env);
      // The same server, with a close() that leaves it to the file's end.
      return Object.create(await shared, { close: { value: async () => undefined } });
    },
  };
}
