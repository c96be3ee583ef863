import type http from 'node:http';
import type https from 'node:https';
import type { Logger } from 'pino';
import type { Registry } from 'prom-client';
import type { EventBus } from '../../core/ports.ts';
import type { CredentialVerifier } from '../../core/service-ports.ts';
import type { ServiceModule } from '../../platform/module.ts';
import { type BehindGateway, NotificationsHub } from './socket/notifications.socket.ts';

/**
 * Notifications: real-time file changes over Socket.IO, fed by the durable bus.
 * It owns no tables: the history it replays is the bus's outbox.
 */
export interface NotificationsService extends ServiceModule {
  /** Mounts the Socket.IO endpoint on the gateway's HTTPS server, or alone on the service's own (distributed mode). */
  attach(server: https.Server | http.Server, behindGateway?: BehindGateway): void;
}

export function createNotificationsService(deps: {
  bus: EventBus;
  verifiers: CredentialVerifier[];
  logger: Logger;
  metrics: Registry;
  corsOrigins: string[];
  authTimeoutMs: number;
  recheckMs?: number;
  /** The largest `since` backlog replayed (default 100,000 events); a larger one is refused with `replay_unavailable`. */
  replayMax?: number;
}): NotificationsService {
  const hub = new NotificationsHub({ ...deps, recheckMs: deps.recheckMs ?? 30_000 });
  return {
    name: 'notifications',
    routes: [],
    consumers: [hub.consumer()],
    attach: (server, behindGateway) => hub.attach(server, behindGateway),
    start: () => undefined,
    close: () => hub.close(),
  };
}
