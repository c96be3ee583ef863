import { connect, type NatsConnection } from '@nats-io/transport-node';
import type { Logger } from 'pino';

/**
 * The process's one NATS connection (NATS_URL): the registry of distributed mode, later the
 * bus transport. The first connection must succeed within a few seconds, so a wrong URL fails
 * the start with one clear line; after that the client reconnects forever on its own.
 */
export class NatsUnreachableError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'NatsUnreachableError';
  }
}

export async function connectNats(url: string, name: string, logger: Logger): Promise<NatsConnection> {
  let nc: NatsConnection;
  try {
    nc = await connect({ servers: url, name, timeout: 5_000, maxReconnectAttempts: -1, reconnectTimeWait: 1_000, pingInterval: 10_000 });
  } catch (error) {
    throw new NatsUnreachableError(`NATS at ${redact(url)} does not answer (${(error as Error).message}). Start it or fix NATS_URL.`);
  }
  (async () => {
    for await (const status of nc.status()) {
      if (status.type === 'disconnect') logger.warn({ server: status.server }, 'NATS connection lost; reconnecting');
      else if (status.type === 'reconnect') logger.info({ server: status.server }, 'NATS connection back');
    }
  })().catch(() => undefined);
  return nc;
}

/** Readiness: NATS answers a round trip. */
export async function pingNats(nc: NatsConnection): Promise<void> {
  if (nc.isClosed()) throw new Error('NATS connection closed');
  await nc.flush();
}

function redact(url: string): string {
  try {
    const u = new URL(url);
    if (u.password) u.password = '***';
    return u.toString();
  } catch {
    return url;
  }
}
