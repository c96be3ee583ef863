import { RELAY_CONSUMER } from '../adapters/bus/nats-relay.ts';
import type { LedWork } from './led.ts';
import type { Platform } from './platform.ts';

/**
 * The outbox's relay to NATS JetStream as led work, for the processes that may run it
 * (`bantu start` with NATS_URL, every `bantu serve files`: opened with `relay: true`, so
 * their bus registers the relay stopped). Run it under the `nats-relay` leadership, after
 * the bus has started, so that one process of the installation relays. Undefined without NATS.
 */
export function natsRelayWork(platform: Platform): LedWork | undefined {
  if (!platform.nats) return undefined;
  const { bus } = platform;
  platform.busMetrics.watch(RELAY_CONSUMER);
  return {
    start: () => bus.startConsumer(RELAY_CONSUMER),
    stop: () => bus.stopConsumer(RELAY_CONSUMER),
  };
}
