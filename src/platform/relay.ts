import { natsRelay } from '../adapters/bus/nats-relay.ts';
import type { ServiceModule } from './module.ts';
import type { Platform } from './platform.ts';

/**
 * The outbox's relay to NATS JetStream as a module of one led consumer, for the processes
 * that run it (`bantu start` with NATS_URL, every `bantu serve files`): register it with
 * `registerConsumers(bus, [relay], { led: true })` and run it under the `nats-relay`
 * leadership, so one process of the installation relays. Undefined without NATS.
 */
export function natsRelayModule(platform: Platform): Pick<ServiceModule, 'consumers' | 'start' | 'close'> | undefined {
  const { nats, config, logger } = platform;
  if (!nats) return undefined;
  const relay = natsRelay(nats, { prefix: config.natsPrefix, ...config.natsStreams }, logger.child({ component: 'nats-relay' }));
  return { consumers: [relay], start: () => undefined, close: () => undefined };
}
