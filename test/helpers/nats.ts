import { type ChildProcess, spawn } from 'node:child_process';
import fs from 'node:fs/promises';
import net from 'node:net';
import { jetstreamManager } from '@nats-io/jetstream';
import { connect } from '@nats-io/transport-node';
import { streamName } from '../../src/adapters/bus/nats-relay.ts';
import type { Environment } from '../../src/core/principal.ts';
import { freePort } from './distributed.ts';
import { makeTempDir } from './server.ts';

/**
 * A NATS server of the test's own (`/usr/sbin/nats-server -js`), on a free port with its own
 * store folder, for fault tests: kill it (-9), start it again on the same port and store.
 * Never the machine's own server.
 */
export interface PrivateNats {
  url: string;
  kill(signal?: NodeJS.Signals): Promise<void>;
  /** Starts it again on the same port and store folder. */
  start(): Promise<void>;
  close(): Promise<void>;
}

const NATS_SERVER = '/usr/sbin/nats-server';

export async function startPrivateNats(): Promise<PrivateNats> {
  const port = await freePort();
  const dir = await makeTempDir('bantu-nats-');
  let child: ChildProcess | undefined;
  const start = async () => {
    child = spawn(NATS_SERVER, ['-js', '-a', '127.0.0.1', '-p', String(port), '-sd', dir], { stdio: 'ignore' });
    const deadline = Date.now() + 15_000;
    while (!(await answers(port))) {
      if (child.exitCode !== null) throw new Error(`nats-server exited ${child.exitCode}`);
      if (Date.now() > deadline) throw new Error('nats-server did not start');
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
  };
  const kill = async (signal: NodeJS.Signals = 'SIGKILL') => {
    const running = child;
    if (!running || running.exitCode !== null || running.signalCode !== null) return;
    const exited = new Promise((resolve) => running.once('exit', resolve));
    running.kill(signal);
    await exited;
  };
  await start();
  return {
    url: `nats://127.0.0.1:${port}`,
    kill,
    start,
    async close() {
      await kill('SIGTERM');
      await fs.rm(dir, { recursive: true, force: true });
    },
  };
}

function answers(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = net.connect(port, '127.0.0.1');
    socket.once('connect', () => {
      socket.destroy();
      resolve(true);
    });
    socket.once('error', () => resolve(false));
  });
}

/** The `Nats-Msg-Id` of every message of an environment's events stream, in stream order (empty without the stream). */
export async function streamMessageIds(url: string, prefix: string, environment: Environment): Promise<string[]> {
  const nc = await connect({ servers: url });
  try {
    const jsm = await jetstreamManager(nc);
    const name = streamName(prefix, environment);
    const info = await jsm.streams.info(name).catch(() => null);
    if (!info) return [];
    const ids: string[] = [];
    for (let seq = info.state.first_seq; seq <= info.state.last_seq; seq++) {
      const message = await jsm.streams.getMessage(name, { seq }).catch(() => null);
      const id = message?.header?.get('Nats-Msg-Id');
      if (id) ids.push(id);
    }
    return ids;
  } finally {
    await nc.close();
  }
}
