import { type JetStreamClient, type JetStreamManager, jetstream, jetstreamManager, StorageType } from '@nats-io/jetstream';
import { type NatsConnection, nanos } from '@nats-io/transport-node';
import type { Logger } from 'pino';
import type { BusEvent } from '../../core/events.ts';
import { ENVIRONMENTS, type Environment } from '../../core/principal.ts';
import type { BusConsumer } from '../../platform/module.ts';

/**
 * The outbox relayed to NATS JetStream: PostgreSQL stays the source of truth, JetStream the
 * transport between processes. The relay is a durable consumer of the outbox like any other:
 * it publishes each committed event to its environment's stream, with the event id as
 * `Nats-Msg-Id` (the stream drops a duplicate inside its window), and its cursor moves only
 * once JetStream has acknowledged every event of the batch. NATS away: the publish fails,
 * the consumer retries with backoff and never sets an event aside, and the outbox keeps
 * everything for when NATS is back. One relay runs per installation (a leadership).
 *
 * Streams: `<prefix>_events_<environment>`, subjects `<prefix>.events.<environment>.<type>`.
 */
export const RELAY_CONSUMER = 'nats-relay';

export interface StreamSettings {
  prefix: string;
  replicas: number;
  storage: 'file' | 'memory';
  maxAgeHours: number;
}

/** How long the streams remember a message id: a relay that crashed after publishing republishes within seconds. */
const DUPLICATE_WINDOW_MS = 2 * 60_000;
const PUBLISH_TIMEOUT_MS = 5_000;

export function streamName(prefix: string, environment: Environment): string {
  return `${prefix}_events_${environment}`;
}

export function subjectOf(prefix: string, environment: Environment, type: string): string {
  return `${prefix}.events.${environment}.${type}`;
}

/** The message id of an event: ids are per environment, and each environment has its own stream. */
export function messageIdOf(event: Pick<BusEvent, 'event_id'>): string {
  return event.event_id;
}

/** Creates each environment's stream, or brings its settings to these. */
export async function ensureStreams(jsm: JetStreamManager, settings: StreamSettings): Promise<void> {
  for (const environment of ENVIRONMENTS) {
    const config = {
      name: streamName(settings.prefix, environment),
      subjects: [`${settings.prefix}.events.${environment}.>`],
      storage: settings.storage === 'memory' ? StorageType.Memory : StorageType.File,
      num_replicas: settings.replicas,
      max_age: nanos(settings.maxAgeHours * 3600_000),
      duplicate_window: nanos(DUPLICATE_WINDOW_MS),
    };
    try {
      await jsm.streams.info(config.name);
      await jsm.streams.update(config.name, config);
    } catch (error) {
      if (!isStreamNotFound(error)) throw error;
      await jsm.streams.add(config);
    }
  }
}

function isStreamNotFound(error: unknown): boolean {
  const e = error as { name?: string; message?: string; code?: number | string; api_error?: { err_code?: number } };
  return e?.api_error?.err_code === 10059 || /stream not found/i.test(e?.message ?? '');
}

/** The relay as a bus consumer (batch): register it with `autoStart: false` and run it under a leadership. */
export function natsRelay(nc: NatsConnection, settings: StreamSettings, logger: Logger): BusConsumer {
  let js: JetStreamClient | undefined;
  let streamsReady = false;
  const publish = async (events: BusEvent[]) => {
    if (!streamsReady) {
      await ensureStreams(await jetstreamManager(nc), settings);
      streamsReady = true;
      logger.info({ prefix: settings.prefix }, 'JetStream events streams ready');
    }
    js ??= jetstream(nc);
    const client = js;
    try {
      // Sent in commit order on one connection, so each stream stores them in that order; acknowledged together.
      await Promise.all(
        events.map((event) =>
          client.publish(subjectOf(settings.prefix, event.environment, event.type), JSON.stringify(event), {
            msgID: messageIdOf(event),
            timeout: PUBLISH_TIMEOUT_MS,
          }),
        ),
      );
    } catch (error) {
      // A stream lost with the NATS store (or deleted by an operator) is made again on the next try.
      streamsReady = false;
      throw error;
    }
  };
  return {
    name: RELAY_CONSUMER,
    batch: true,
    handle: publish,
    // Never a dead letter: a publish fails only while NATS cannot take it, and the outbox holds on.
    options: { deadLetter: 'poison-only', autoStart: false },
  };
}
