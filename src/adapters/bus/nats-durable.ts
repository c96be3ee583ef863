import { AckPolicy, DeliverPolicy, type JetStreamManager } from '@nats-io/jetstream';
import { nanos } from '@nats-io/transport-node';
import type { Environment } from '../../core/principal.ts';
import { sleep } from './outbox-retries.ts';

/**
 * The durable pull consumer that a work consumer (backup, later exports and webhooks) shares
 * across processes, one per environment's stream, and the wait that keeps a file's events in
 * commit order when one process takes over from another.
 *
 * Order: a consumer fetches at most `FETCH_BATCH` messages, hands them over in stream order
 * (the relay publishes in commit order), acknowledges every one of them, and only then
 * fetches again; `max_ack_pending` is that batch, so JetStream never has more out than one
 * fetch. Handler failures are retried in the process (the bus's own backoff, as on the
 * outbox), never by a nak: a JetStream redelivery would come after the later events of the
 * same file. JetStream redelivers only what a process took and never acknowledged (it
 * crashed, or was stopped with events in hand, which it naks). Those come back first (the
 * server serves redeliveries before new messages) once their ack wait has passed, so a
 * starting consumer that finds unacknowledged messages waits out the ack wait before its
 * first fetch, and so does a running one after its connection dropped (what was in transit
 * then is lost, and redelivered). A redelivered run is handed over one event at a time, and `max_deliver` bounds
 * the redeliveries: before its last try an event is recorded as a dead letter (in
 * PostgreSQL, so an event that takes every process down is set aside, never lost), taken
 * back if that try passes.
 */
export const FETCH_BATCH = 200;
/** Beyond the ack wait, for the server's redelivery timer to have fired. */
const HANDOVER_MARGIN_MS = 500;

export interface DurableSettings {
  /** JetStream deliveries of one message before it is set aside (`max_deliver`). */
  maxDeliver: number;
  /** How long a message may stay unacknowledged before JetStream redelivers it (`ack_wait`); the consumer says it is still working well within it. */
  ackWaitMs: number;
}

/** A JetStream consumer name from a bus consumer name (JetStream names take no dots, wildcards or spaces). */
export function durableName(consumer: string): string {
  return consumer.replace(/[^A-Za-z0-9_-]/g, '_');
}

/** Creates the durable consumer on the environment's stream, or brings its settings to these. */
export async function ensureDurable(jsm: JetStreamManager, stream: string, prefix: string, environment: Environment, name: string, settings: DurableSettings): Promise<void> {
  const durable = durableName(name);
  const tunable = { ack_wait: nanos(settings.ackWaitMs), max_deliver: settings.maxDeliver, max_ack_pending: FETCH_BATCH };
  const existing = await jsm.consumers.info(stream, durable).catch((error) => {
    if (isNotFound(error)) return null;
    throw error;
  });
  if (existing) {
    const c = existing.config;
    if (c.ack_wait !== tunable.ack_wait || c.max_deliver !== tunable.max_deliver || c.max_ack_pending !== tunable.max_ack_pending) {
      await jsm.consumers.update(stream, durable, tunable);
    }
    return;
  }
  await jsm.consumers.add(stream, {
    durable_name: durable,
    ack_policy: AckPolicy.Explicit,
    deliver_policy: DeliverPolicy.All,
    filter_subject: `${prefix}.events.${environment}.>`,
    ...tunable,
  });
}

/**
 * Before a consumer's first fetch in this process: while messages handed to another process
 * (or to this one before a stop) are unacknowledged, wait until they are acknowledged or
 * their ack wait has passed, so that they are redelivered before anything newer.
 */
export async function waitForHandover(jsm: JetStreamManager, stream: string, name: string, ackWaitMs: number, signal: AbortSignal): Promise<void> {
  const deadline = Date.now() + ackWaitMs + HANDOVER_MARGIN_MS;
  while (!signal.aborted && Date.now() < deadline) {
    const info = await jsm.consumers.info(stream, durableName(name));
    if (info.num_ack_pending === 0) return;
    await sleep(100, signal);
  }
}

export function isNotFound(error: unknown): boolean {
  const e = error as { message?: string; api_error?: { err_code?: number; code?: number } };
  // 10014: consumer not found, 10059: stream not found.
  return e?.api_error?.err_code === 10014 || e?.api_error?.err_code === 10059 || /not found/i.test(e?.message ?? '');
}
