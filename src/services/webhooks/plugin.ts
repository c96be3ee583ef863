import type { LookupFunction } from 'node:net';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Logger } from 'pino';
import { Counter, Gauge, Histogram, type Registry } from 'prom-client';
import type { Databases } from '../../adapters/db/pg.ts';
import type { Environment } from '../../core/principal.ts';
import { SecretBox } from '../../core/secret-box.ts';
import type { AdminNotice, AdminNoticePort } from '../../core/service-ports.ts';
import type { ServiceMigrations, ServiceModule } from '../../platform/module.ts';
import { webhooksConsumer } from './consumer.ts';
import { parseNetworks } from './domain/address-safety.ts';
import { type Resolver, systemResolver } from './domain/resolve.ts';
import { WebhooksService } from './domain/webhooks.service.ts';
import { webhooksRoutes } from './http/webhooks.routes.ts';
import { pendingCount } from './repo/deliveries.repo.ts';
import type { EndpointRow } from './repo/endpoints.repo.ts';
import { WebhookSender } from './sender.ts';
import { DeliveryWorker } from './worker.ts';

const here = path.dirname(fileURLToPath(import.meta.url));

/** Webhooks: endpoints per tenant and environment, and their deliveries, in each environment database. */
export const webhooksMigrations: ServiceMigrations = {
  environment: [{ service: 'webhooks', folder: path.join(here, 'migrations') }],
};

export interface WebhooksOptions {
  databases: Databases;
  /** The installation's secret (BANTU_SECRET_KEY): seals the endpoints' signing secrets. */
  secretKey: string;
  config: { allowedNetworks: string; timeoutMs: number; retryBaseMs: number; retryWindowSeconds: number; concurrency: number };
  /** Run the consumer and the delivery worker in this process (where it leads `webhooks`). */
  worker: boolean;
  metrics?: Registry;
  logger: Logger;
  /** Tells the tenant's administrators that an endpoint was disabled (audit entry, mail). */
  notices?: AdminNoticePort;
  /** Name resolution, for registration and delivery alike (tests: a resolver that changes its answer). */
  lookup?: LookupFunction;
  resolve?: Resolver;
}

export interface WebhooksModule extends ServiceModule {
  service: WebhooksService;
  /** Frees the sender's connections; once, when the platform closes (start/close may run several times). */
  dispose(): Promise<void>;
}

export function createWebhooksService(options: WebhooksOptions): WebhooksModule {
  const { config, logger } = options;
  const allowedNetworks = parseNetworks(config.allowedNetworks);
  const box = new SecretBox(options.secretKey);
  const sender = new WebhookSender(allowedNetworks, config.timeoutMs, options.lookup);
  const metrics = options.metrics ? webhookMetrics(options.metrics, options.databases) : undefined;
  const worker = new DeliveryWorker({
    databases: options.databases,
    box,
    sender,
    perEndpoint: config.concurrency,
    retryBaseMs: config.retryBaseMs,
    retryWindowMs: config.retryWindowSeconds * 1000,
    timeoutMs: config.timeoutMs,
    logger,
    observe: (result, outcome) => {
      metrics?.deliveries.inc({ outcome });
      metrics?.latency.observe({ outcome: result.ok ? 'success' : 'failure' }, result.durationMs / 1000);
    },
    onDisabled: async (environment: Environment, endpoint: EndpointRow, lastError) => {
      metrics?.disabled.inc({ environment });
      await options.notices?.notify(environment, endpoint.tenant_id, disabledNotice(endpoint, lastError, config.retryWindowSeconds)).catch((error) => logger.warn({ err: error, webhook: endpoint.id }, 'the disabled webhook could not be reported'));
    },
  });
  const wake = () => worker.wake();
  const service = new WebhooksService({ databases: options.databases, box, allowedNetworks, resolve: options.resolve ?? systemResolver, wake });
  return {
    name: 'webhooks',
    service,
    routes: webhooksRoutes(service),
    consumers: options.worker ? [webhooksConsumer(options.databases, worker)] : [],
    start() {
      if (options.worker) worker.start();
    },
    async close() {
      await worker.stop();
    },
    dispose: () => sender.close(),
  };
}

function disabledNotice(endpoint: EndpointRow, lastError: string | null, windowSeconds: number): AdminNotice {
  return {
    type: 'webhook_disabled',
    detail: { webhook_id: endpoint.id, url: endpoint.url, last_error: lastError },
    subject: 'A webhook endpoint was disabled',
    text:
      `Deliveries to the webhook ${endpoint.id} (${endpoint.url}) failed for the whole retry window (${windowSeconds >= 3600 ? `${Math.round(windowSeconds / 3600)} hours` : `${windowSeconds} seconds`}), so it was disabled.\n` +
      `Last error: ${lastError ?? 'unknown'}.\n\n` +
      'While disabled it gets no events. Once it answers again, enable it (PATCH /v1/webhooks/{id} with {"status": "enabled"}); ' +
      'failed deliveries can be sent again one by one (POST /v1/webhooks/{id}/deliveries/{delivery_id}/retry).\n',
  };
}

function webhookMetrics(registry: Registry, databases: Databases) {
  new Gauge({
    name: 'webhook_deliveries_pending',
    help: 'Webhook deliveries waiting to be sent or retried',
    labelNames: ['environment'],
    registers: [registry],
    async collect() {
      for (const environment of ['live', 'test'] as const) {
        try {
          this.set({ environment }, await pendingCount(databases.environments[environment]));
        } catch {
          // keep the last value: a failing database must not fail /metrics
        }
      }
    },
  });
  return {
    deliveries: new Counter({
      name: 'webhook_deliveries_total',
      help: 'Webhook delivery attempts by outcome: succeeded, retrying (failed, will be retried) or failed (given up)',
      labelNames: ['outcome'],
      registers: [registry],
    }),
    latency: new Histogram({
      name: 'webhook_delivery_duration_seconds',
      help: 'Duration of webhook delivery attempts, from sending to the answer (or the failure)',
      labelNames: ['outcome'],
      buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 15],
      registers: [registry],
    }),
    disabled: disabledCounter(registry),
  };
}

/**
 * Starts at 0 in both environments: a series that first appears at 1 has no increase for
 * Prometheus to see, and the first endpoint disabled would raise no alert.
 */
function disabledCounter(registry: Registry): Counter<'environment'> {
  const counter = new Counter({
    name: 'webhook_endpoints_disabled_total',
    help: 'Webhook endpoints disabled after failing for the whole retry window',
    labelNames: ['environment'],
    registers: [registry],
  });
  for (const environment of ['live', 'test'] as const) counter.inc({ environment }, 0);
  return counter;
}
