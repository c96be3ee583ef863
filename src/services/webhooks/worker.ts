import type { Logger } from 'pino';
import type { Databases } from '../../adapters/db/pg.ts';
import { ENVIRONMENTS, type Environment } from '../../core/principal.ts';
import type { SecretBox } from '../identity/domain/secret-box.ts';
import { signedHeaders } from './domain/signing.ts';
import { secretPurpose } from './domain/webhooks.service.ts';
import { claimDue, type DeliveryRow, recordAttempt } from './repo/deliveries.repo.ts';
import { disableEndpoint, type EndpointRow, endpointsByIds } from './repo/endpoints.repo.ts';
import type { AttemptResult, WebhookSender } from './sender.ts';

/**
 * The delivery worker: claims due deliveries (a lease, so one killed mid-send is sent again
 * once it ends), sends each on its own (never one after another: a slow endpoint holds only
 * its own slots, at most `perEndpoint` at once), and records the outcome. Failures are retried
 * with exponential backoff and jitter until `retryWindowMs` after the first failure; then the
 * endpoint is disabled and `onDisabled` told; its other deliveries stay pending, for when it is enabled again.
 */
export interface WorkerOptions {
  databases: Databases;
  box: SecretBox;
  sender: WebhookSender;
  perEndpoint: number;
  retryBaseMs: number;
  retryWindowMs: number;
  timeoutMs: number;
  logger: Logger;
  observe?: (result: AttemptResult, outcome: 'succeeded' | 'retrying' | 'failed') => void;
  onDisabled?: (environment: Environment, endpoint: EndpointRow, lastError: string | null) => Promise<void>;
}

/** Attempts in flight at most in this process, whatever the endpoints. */
const MAX_IN_FLIGHT = 256;
/** How often due retries are looked for when nothing wakes the worker. */
const POLL_MS = 500;
const MAX_BACKOFF_MS = 6 * 3600_000;

/** The delay before attempt `attempt + 1` after `attempt` failures: base·3^(n-1), capped, between half and all of it (jitter). */
export function backoffMs(attempt: number, baseMs: number, random = Math.random): number {
  const full = Math.min(MAX_BACKOFF_MS, baseMs * 3 ** Math.max(0, attempt - 1));
  return Math.round(full / 2 + (random() * full) / 2);
}

export class DeliveryWorker {
  private running = false;
  private loop: Promise<void> = Promise.resolve();
  private wakeUp: (() => void) | undefined;
  private woken = false;
  private readonly busy = new Map<string, number>();
  private readonly inFlight = new Set<Promise<void>>();

  constructor(private readonly options: WorkerOptions) {}

  start(): void {
    if (this.running) return;
    this.running = true;
    this.loop = this.run();
  }

  /** Something may be due now (a new delivery, a freed slot). */
  wake(): void {
    this.woken = true;
    this.wakeUp?.();
  }

  async stop(): Promise<void> {
    this.running = false;
    this.wake();
    await this.loop;
    await Promise.all([...this.inFlight]);
  }

  private async run(): Promise<void> {
    while (this.running) {
      this.woken = false;
      try {
        for (const environment of ENVIRONMENTS) await this.claim(environment);
      } catch (error) {
        this.options.logger.warn({ err: error }, 'webhook deliveries could not be claimed; trying again');
      }
      if (!this.running) break;
      if (this.woken) continue;
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, POLL_MS);
        this.wakeUp = () => {
          clearTimeout(timer);
          resolve();
        };
      });
      this.wakeUp = undefined;
    }
  }

  private async claim(environment: Environment): Promise<void> {
    const room = MAX_IN_FLIGHT - this.inFlight.size;
    if (room <= 0) return;
    const db = this.options.databases.environments[environment];
    // The lease outlasts an attempt, so a delivery is never claimed twice while it is being sent.
    const rows = await claimDue(db, { limit: room, perEndpoint: this.options.perEndpoint, busy: this.busy, leaseMs: this.options.timeoutMs * 2 + 5000 });
    if (rows.length === 0) return;
    const endpoints = new Map((await endpointsByIds(db, [...new Set(rows.map((r) => r.endpoint_id))])).map((e) => [e.id, e]));
    for (const row of rows) {
      const endpoint = endpoints.get(row.endpoint_id);
      if (!endpoint) continue; // deleted since: its deliveries went with it
      this.busy.set(endpoint.id, (this.busy.get(endpoint.id) ?? 0) + 1);
      const attempt = this.attempt(environment, endpoint, row)
        .catch((error) => this.options.logger.warn({ err: error, delivery: row.id }, 'webhook attempt not recorded; it is sent again when its lease ends'))
        .finally(() => {
          const left = (this.busy.get(endpoint.id) ?? 1) - 1;
          if (left <= 0) this.busy.delete(endpoint.id);
          else this.busy.set(endpoint.id, left);
          this.inFlight.delete(attempt);
          this.wake();
        });
      this.inFlight.add(attempt);
    }
  }

  private async attempt(environment: Environment, endpoint: EndpointRow, row: DeliveryRow): Promise<void> {
    const { box } = this.options;
    const purpose = secretPurpose(endpoint.id);
    const secrets = [box.open(endpoint.secret, purpose).toString('utf8')];
    if (endpoint.previous_secret && endpoint.previous_expires_at && endpoint.previous_expires_at.getTime() > Date.now()) {
      secrets.push(box.open(endpoint.previous_secret, purpose).toString('utf8'));
    }
    const headers = signedHeaders(secrets, row.event_id, Math.floor(Date.now() / 1000), row.payload);
    const result = await this.options.sender.send(endpoint.url, headers, row.payload);
    const db = this.options.databases.environments[environment];
    const base = { responseStatus: result.status, error: result.error, durationMs: result.durationMs };
    if (result.ok) {
      await recordAttempt(db, row.id, { ...base, status: 'succeeded', nextAttemptAt: null, firstFailedAt: row.first_failed_at });
      this.options.observe?.(result, 'succeeded');
      return;
    }
    const now = Date.now();
    const firstFailedAt = row.first_failed_at ?? new Date(now);
    if (now - firstFailedAt.getTime() < this.options.retryWindowMs) {
      const next = new Date(now + backoffMs(row.attempt + 1, this.options.retryBaseMs));
      await recordAttempt(db, row.id, { ...base, status: 'pending', nextAttemptAt: next, firstFailedAt });
      this.options.observe?.(result, 'retrying');
      return;
    }
    await recordAttempt(db, row.id, { ...base, status: 'failed', nextAttemptAt: null, firstFailedAt });
    this.options.observe?.(result, 'failed');
    if (await disableEndpoint(db, endpoint.id)) {
      this.options.logger.warn({ webhook: endpoint.id, tenant: endpoint.tenant_id, environment }, 'webhook endpoint disabled after its retry window');
      await this.options.onDisabled?.(environment, endpoint, result.error);
    }
  }
}
