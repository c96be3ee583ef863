import pg from 'pg';
import type { Logger } from 'pino';
import type { Environment } from '../../core/principal.ts';
import type { Consumer } from './outbox-consumer.ts';
import { NotificationTap, parseNote } from './outbox-notification-tap.ts';
import { CHANNEL } from './outbox-writer.ts';

/** What the LISTEN connection of one environment serves. */
export interface ListenerOptions {
  environment: Environment;
  url: string;
  logger: Logger;
  signal: AbortSignal;
  consumers: readonly Consumer[];
  /** Filled here with a tap per `lowLatency` consumer; emptied when notifications may have been missed. */
  taps: Map<string, NotificationTap>;
  /** The consumer loops' wake-ups, called on every notification. */
  wakers: Set<() => void>;
}

/**
 * Opens the environment's LISTEN connection: every notification wakes the consumer loops,
 * and feeds the taps first. Resolves once listening, with every tap armed.
 */
export async function listen(options: ListenerOptions): Promise<pg.Client> {
  const { environment, logger, taps, wakers } = options;
  const client = new pg.Client({ connectionString: options.url });
  let listening = true;
  // Notifications may have been missed from here on: nothing more is delivered ahead.
  const stopTaps = () => {
    listening = false;
    for (const tap of taps.values()) tap.enabled = false;
    taps.clear();
  };
  client.on('error', (error) => {
    logger.warn({ err: error, environment }, 'outbox listener connection lost; polling');
    stopTaps();
  });
  client.on('end', stopTaps);
  const rearm = (armAt: (xmax: bigint) => void) => {
    if (!listening) return;
    client.query<{ xmax: string }>('select pg_snapshot_xmax(pg_current_snapshot())::text as xmax').then(
      (result) => {
        if (listening) armAt(BigInt(result.rows[0]?.xmax ?? '0'));
      },
      () => stopTaps(),
    );
  };
  for (const consumer of options.consumers) {
    if (consumer.fromNotification) {
      taps.set(consumer.name, new NotificationTap(consumer, logger.child({ consumer: consumer.name, environment }), options.signal, rearm));
    }
  }
  client.on('notification', (message) => {
    // Deliveries from the notification first: the reads the wake-ups start can wait.
    if (taps.size > 0) {
      const note = parseNote(message.payload, environment);
      for (const tap of taps.values()) {
        if (note) tap.push(note);
        else tap.disarm('a notification without a position'); // e.g. from an older version's append
      }
    }
    for (const wake of wakers) wake();
  });
  await client.connect();
  await client.query(`listen ${CHANNEL}`);
  // Every transaction that commits from now on is notified here; the ones before have
  // xids below this xmax, and the read must pass them before anything goes ahead.
  const armed = await client.query<{ xmax: string }>('select pg_snapshot_xmax(pg_current_snapshot())::text as xmax');
  for (const tap of taps.values()) tap.armedAt = BigInt(armed.rows[0]?.xmax ?? '0');
  return client;
}
