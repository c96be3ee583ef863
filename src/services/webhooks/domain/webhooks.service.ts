import { type Databases, withTenant } from '../../../adapters/db/pg.ts';
import { AppError, Errors } from '../../../core/errors.ts';
import { FILE_EVENT_TYPES } from '../../../core/events.ts';
import { newId } from '../../../core/ids.ts';
import { decodeCursor, pageOf } from '../../../core/pagination.ts';
import type { TenantPrincipal } from '../../../core/principal.ts';
import type { SecretBox } from '../../../core/secret-box.ts';
import * as deliveriesRepo from '../repo/deliveries.repo.ts';
import * as endpointsRepo from '../repo/endpoints.repo.ts';
import { type AllowedNetworks, judgeUrl } from './address-safety.ts';
import { addressesOf, type Resolver } from './resolve.ts';
import { newSecret } from './signing.ts';

/**
 * Webhook endpoints of a tenant and environment, and their deliveries: the domain behind the
 * routes (no HTTP here). Secrets are sealed with the installation's secret box and returned
 * only by `create` and `rotateSecret`.
 */
export interface WebhooksDeps {
  databases: Databases;
  box: SecretBox;
  allowedNetworks: AllowedNetworks;
  resolve: Resolver;
  /** Tells the delivery worker (when in this process) that something is due now. */
  wake: () => void;
}

export interface Webhook {
  id: string;
  url: string;
  events: string[];
  description: string | null;
  status: 'enabled' | 'disabled';
  created_at: string;
  updated_at: string;
}

export interface Delivery {
  id: string;
  event_id: string;
  type: string;
  attempt: number;
  status: 'pending' | 'succeeded' | 'failed';
  response_status: number | null;
  error: string | null;
  duration_ms: number | null;
  created_at: string;
  next_attempt_at: string | null;
}

/** How long the secret a rotation replaced keeps signing beside the new one. */
export const ROTATION_OVERLAP_MS = 24 * 3600_000;

export function secretPurpose(endpointId: string): string {
  return `webhook-secret:${endpointId}`;
}

function toWebhook(row: endpointsRepo.EndpointRow): Webhook {
  return {
    id: row.id,
    url: row.url,
    events: row.events,
    description: row.description,
    status: row.status,
    created_at: row.created_at.toISOString(),
    updated_at: row.updated_at.toISOString(),
  };
}

function toDelivery(row: deliveriesRepo.DeliveryRow): Delivery {
  return {
    id: row.id,
    event_id: row.event_id,
    type: row.type,
    attempt: row.attempt,
    status: row.status,
    response_status: row.response_status,
    error: row.error,
    duration_ms: row.duration_ms,
    created_at: row.created_at.toISOString(),
    next_attempt_at: row.status === 'pending' && row.next_attempt_at ? row.next_attempt_at.toISOString() : null,
  };
}

const notFound = () => new AppError(Errors.notFound, 'No such webhook');

export class WebhooksService {
  constructor(private readonly deps: WebhooksDeps) {}

  private db(principal: TenantPrincipal) {
    return this.deps.databases.environments[principal.environment];
  }

  /** Refuses a URL that is not http(s), or whose addresses the rule refuses (422 validation_failed). */
  async checkUrl(text: string): Promise<string> {
    let url: URL;
    try {
      url = new URL(text);
    } catch {
      throw invalidUrl('is not a URL');
    }
    if (url.protocol !== 'https:' && url.protocol !== 'http:') throw invalidUrl('must use https');
    if (url.username || url.password) throw invalidUrl('must not carry credentials');
    const reason = judgeUrl(url, await addressesOf(url, this.deps.resolve), this.deps.allowedNetworks);
    if (reason) throw invalidUrl(reason);
    return url.toString();
  }

  async create(principal: TenantPrincipal, input: { url: string; events?: string[]; description?: string }): Promise<Webhook & { secret: string }> {
    const url = await this.checkUrl(input.url);
    const id = newId('whk');
    const secret = newSecret();
    const row = await withTenant(this.db(principal), principal.tenantId, (trx) =>
      endpointsRepo.insertEndpoint(trx, {
        tenant_id: principal.tenantId,
        id,
        url,
        events: distinct(input.events ?? [...FILE_EVENT_TYPES]),
        description: input.description ?? null,
        status: 'enabled',
        secret: this.deps.box.seal(Buffer.from(secret, 'utf8'), secretPurpose(id)),
      }),
    );
    return { ...toWebhook(row), secret };
  }

  async list(principal: TenantPrincipal, query: { limit: number; cursor?: string }): Promise<{ data: Webhook[]; next_cursor: string | null }> {
    const rows = await withTenant(this.db(principal), principal.tenantId, (trx) =>
      endpointsRepo.listEndpoints(trx, principal.tenantId, { before: decodeCursor(query.cursor), limit: query.limit }),
    );
    return pageOf(rows, query.limit, toWebhook);
  }

  async get(principal: TenantPrincipal, id: string): Promise<Webhook> {
    const row = await withTenant(this.db(principal), principal.tenantId, (trx) => endpointsRepo.findEndpoint(trx, principal.tenantId, id));
    if (!row) throw notFound();
    return toWebhook(row);
  }

  async update(principal: TenantPrincipal, id: string, change: endpointsRepo.EndpointChange): Promise<Webhook> {
    const url = change.url === undefined ? undefined : await this.checkUrl(change.url);
    const events = change.events === undefined ? undefined : distinct(change.events);
    const row = await withTenant(this.db(principal), principal.tenantId, (trx) => endpointsRepo.updateEndpoint(trx, principal.tenantId, id, { ...change, url, events }));
    if (!row) throw notFound();
    if (row.status === 'enabled') this.deps.wake();
    return toWebhook(row);
  }

  async remove(principal: TenantPrincipal, id: string): Promise<void> {
    const deleted = await withTenant(this.db(principal), principal.tenantId, (trx) => endpointsRepo.deleteEndpoint(trx, principal.tenantId, id));
    if (!deleted) throw notFound();
  }

  async rotateSecret(principal: TenantPrincipal, id: string): Promise<{ secret: string }> {
    const secret = newSecret();
    const sealed = this.deps.box.seal(Buffer.from(secret, 'utf8'), secretPurpose(id));
    const rotated = await withTenant(this.db(principal), principal.tenantId, (trx) =>
      endpointsRepo.rotateSecret(trx, principal.tenantId, id, sealed, new Date(Date.now() + ROTATION_OVERLAP_MS)),
    );
    if (!rotated) throw notFound();
    return { secret };
  }

  /** Queues a `ping` event for the endpoint, delivered like any other. */
  async ping(principal: TenantPrincipal, id: string): Promise<{ event_id: string }> {
    const eventId = newId('evt');
    await withTenant(this.db(principal), principal.tenantId, async (trx) => {
      if (!(await endpointsRepo.findEndpoint(trx, principal.tenantId, id))) throw notFound();
      const payload = JSON.stringify({ id: eventId, type: 'ping', occurred_at: new Date().toISOString(), environment: principal.environment, data: { webhook_id: id } });
      await deliveriesRepo.insertDeliveries(trx, [{ tenant_id: principal.tenantId, id: newId('dlv'), endpoint_id: id, event_id: eventId, type: 'ping', payload }]);
    });
    this.deps.wake();
    return { event_id: eventId };
  }

  async deliveries(principal: TenantPrincipal, id: string, query: { limit: number; cursor?: string }): Promise<{ data: Delivery[]; next_cursor: string | null }> {
    const rows = await withTenant(this.db(principal), principal.tenantId, async (trx) => {
      if (!(await endpointsRepo.findEndpoint(trx, principal.tenantId, id))) throw notFound();
      return deliveriesRepo.listDeliveries(trx, principal.tenantId, id, { before: decodeCursor(query.cursor), limit: query.limit });
    });
    return pageOf(rows, query.limit, toDelivery);
  }

  async retry(principal: TenantPrincipal, id: string, deliveryId: string): Promise<void> {
    const requeued = await withTenant(this.db(principal), principal.tenantId, (trx) => deliveriesRepo.requeueDelivery(trx, principal.tenantId, id, deliveryId));
    if (!requeued) throw new AppError(Errors.notFound, 'No such delivery');
    this.deps.wake();
  }
}

function invalidUrl(message: string): AppError {
  return new AppError(Errors.validationFailed, `The webhook URL ${message}`, { errors: [{ field: 'url', message }] });
}

function distinct(values: string[]): string[] {
  return [...new Set(values)];
}
