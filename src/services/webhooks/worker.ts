import type { Logger } from 'pino';
import type { Databases } from '../../adapters/db/pg.ts';
import { ENVIRONMENTS, type Environment } from '../../core/principal.ts';
import type { SecretBox } from '../../core/secret-box.ts';
import { contextOf, injectTraceparent, inSpan, SpanKind, SpanStatusCode, tracerOf, tracingOn } from '../../core/trace.ts';
import { signedHeaders } from './domain/signing.ts';
import { secretPurpose } from './domain/webhooks.service.ts';
import { type AttemptOutcome, claimDue, type DeliveryRow, recordAttempts, releaseClaims } from './repo/deliveries.repo.ts';
import { disableEndpoint, type EndpointRow, endpointsByIds } from './repo/endpoints.repo.ts';
import type { AttemptResult, WebhookSender } from './sender.ts';

const tracer = tracerOf('webhooks');

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
/**
 * Deliveries claimed per endpoint at once, in rounds of its concurrency: one claim feeds many
 * attempts. At 8 (32 rows for 4 in flight) the queue ran dry while the next claim was read.
 */
const PREFETCH = 32;
/**
 * How long an outcome waits for others to be written with (and how many make a write start at
 * once). The slot is freed at the answer, so this delays only the row's status, and a process
 * killed meanwhile sends those deliveries again when their lease ends (at least once). Written
 * as they came, 1,000 deliveries to one endpoint took 233 writes of about 4 outcomes each;
 * lingering, about 90, and a fifth less CPU per delivery (webhooks/deliveries notes).
 */
const OUTCOME_LINGER_MS = 10;
const OUTCOMES_PER_WRITE = 128;
/**
 * Deliveries the consumer may hand straight to the worker, queued per endpoint and held in all
 * (a delivery is about 1 KiB). Past the lease a queued one is claimed again by this worker
 * alone and not sent twice, so a long queue costs memory, not duplicates.
 */
const ADOPTED_PER_ENDPOINT = 1024;
const MAX_HELD = 8192;

/** The delay before attempt `attempt + 1` after `attempt` failures: base·3^(n-1), capped, between half and all of it (jitter). */
export function backoffMs(attempt: number, baseMs: number, random = Math.random): number {
  const full = Math.min(MAX_BACKOFF_MS, baseMs * 3 ** Math.max(0, attempt - 1));
  return Math.round(full / 2 + (random() * full) / 2);
}

interface Held {
  environment: Environment;
  endpoint: EndpointRow;
  queue: DeliveryRow[];
  busy: number;
}

export class DeliveryWorker {
  private running = false;
  private loop: Promise<void> = Promise.resolve();
  private wakeUp: (() => void) | undefined;
  private woken = false;
  /** Per endpoint: the deliveries claimed and not yet started, and the attempts in flight. */
  private readonly held = new Map<string, Held>();
  /** Every delivery claimed here and not yet recorded (queued or in flight): claimed again, it is not sent twice. */
  private readonly claimed = new Set<string>();
  /** The secrets of an endpoint row, opened once per claim that read it (the row is new each time). */
  private readonly secrets = new WeakMap<EndpointRow, { current: string; previous: string | null }>();
  private readonly inFlight = new Set<Promise<void>>();
  /** Releases of handed deliveries that came after a stop. */
  private readonly releasing = new Set<Promise<void>>();
  /** Outcomes waiting to be written, per environment: those that end while a write runs go in the next one. */
  private readonly outcomes = new Map<Environment, Array<{ id: string; outcome: AttemptOutcome; done: (error?: unknown) => void }>>();
  private readonly writing = new Set<Environment>();
  /** Per environment, the timer of the next write while its first outcomes wait. */
  private readonly lingering = new Map<Environment, NodeJS.Timeout>();

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
    await Promise.all([...this.inFlight, ...this.releasing]);
    // Claimed but not started: due again at once, for whichever process leads next.
    for (const environment of ENVIRONMENTS) {
      const ids = [...this.held.values()].filter((h) => h.environment === environment).flatMap((h) => h.queue.map((row) => row.id));
      if (ids.length > 0) await releaseClaims(this.options.databases.environments[environment], ids).catch(() => undefined);
    }
    this.held.clear();
    this.claimed.clear();
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
    // An endpoint with half a claim or more still queued here gets none more until it drains
    // under that: the next claim is read while the last one is being sent, not after.
    const held = [...this.held.values()].filter((h) => h.queue.length >= this.refillBelow()).map((h) => h.endpoint.id);
    // Held when the claim started: one of them recorded while the claim waited (its row locked
    // by the claim) leaves `claimed` before the rows are looked at, and must not be sent again.
    const heldBefore = new Set(this.claimed);
    const rows = await claimDue(db, { limit: room * PREFETCH, perEndpoint: this.options.perEndpoint * PREFETCH, exclude: held, leaseMs: this.leaseMs(), scan: room });
    if (rows.length === 0) return;
    const endpoints = new Map((await endpointsByIds(db, [...new Set(rows.map((r) => r.endpoint_id))])).map((e) => [e.id, e]));
    for (const row of rows) {
      const endpoint = endpoints.get(row.endpoint_id);
      if (!endpoint) continue; // deleted since: its deliveries went with it
      // Its lease ran out while it waited here (a slow endpoint): claiming it again renewed it.
      if (heldBefore.has(row.id) || this.claimed.has(row.id)) continue;
      this.claimed.add(row.id);
      this.holdFor(environment, endpoint).queue.push(row);
    }
    for (const hold of this.held.values()) this.pump(hold);
  }

  /**
   * The lease of a claimed delivery: how long another process (the next leader) leaves it
   * alone, and so how soon the deliveries of a killed process are sent again. Two attempts'
   * deadlines and a margin: a deposed leader stops starting attempts within seconds and
   * finishes those in flight within one deadline. A delivery still queued here when its lease
   * ends is claimed again by this process alone, which knows it (`claimed`) and does not send
   * it twice; only one started late and caught by a change of leader can go out twice, which
   * at-least-once delivery allows (receivers dedupe by webhook-id).
   */
  leaseMs(): number {
    return 2 * this.options.timeoutMs + 5000;
  }

  /**
   * How many new deliveries to this endpoint the worker takes straight from the consumer now,
   * `granted` being what this batch was given already for other endpoints. Only while its queue
   * is under the refill mark, where a claim would take its rows too: each time the queue falls
   * under it, the claim that follows takes older due ones (retries, overflow) first, so handed
   * rows never starve them. None while stopped, at the in-flight limit or holding MAX_HELD.
   */
  room(endpointId: string, granted = 0): number {
    if (!this.running || this.inFlight.size >= MAX_IN_FLIGHT) return 0;
    const queued = this.held.get(endpointId)?.queue.length ?? 0;
    if (queued >= this.refillBelow()) return 0;
    return Math.max(0, Math.min(ADOPTED_PER_ENDPOINT - queued, MAX_HELD - this.claimed.size - granted));
  }

  /**
   * Deliveries the consumer has just committed leased to this worker (`leaseMs`), queued as a
   * claim would queue them: no claim has to find them, move their lease and read them back.
   */
  adopt(environment: Environment, endpoint: EndpointRow, rows: DeliveryRow[]): void {
    if (rows.length === 0) return;
    if (!this.running) {
      // Stopped while they were written: due again now, for whichever process leads next.
      this.releaseLater(environment, rows.map((row) => row.id));
      return;
    }
    const hold = this.holdFor(environment, endpoint);
    for (const row of rows) {
      this.claimed.add(row.id);
      hold.queue.push(row);
    }
    this.pump(hold);
  }

  /**
   * The endpoint's hold, made on its first delivery. Of two reads of the endpoint (a claim's, the
   * consumer's), the newer one serves what starts from now on: a changed URL, a rotated secret.
   */
  private holdFor(environment: Environment, endpoint: EndpointRow): Held {
    const hold = this.held.get(endpoint.id);
    if (!hold) {
      const made: Held = { environment, endpoint, queue: [], busy: 0 };
      this.held.set(endpoint.id, made);
      return made;
    }
    if (endpoint.updated_at.getTime() >= hold.endpoint.updated_at.getTime()) hold.endpoint = endpoint;
    return hold;
  }

  /** Releases claims without holding the caller; `stop` waits for them. */
  private releaseLater(environment: Environment, ids: string[]): void {
    const release = releaseClaims(this.options.databases.environments[environment], ids)
      .catch(() => undefined)
      .finally(() => this.releasing.delete(release));
    this.releasing.add(release);
  }

  /** Below this many queued deliveries an endpoint is claimed for again. */
  private refillBelow(): number {
    return (this.options.perEndpoint * PREFETCH) / 2;
  }

  /** Starts the endpoint's queued deliveries while it has free slots. */
  private pump(hold: Held): void {
    while (this.running && hold.busy < this.options.perEndpoint && hold.queue.length > 0) {
      const row = hold.queue.shift() as DeliveryRow;
      hold.busy += 1;
      // The endpoint's slot is free once the answer is in: writing the outcome (batched with
      // others) need not hold the next delivery back. A process that dies before the write
      // sends it again when the lease ends: at least once, as the receivers expect.
      let freed = false;
      const free = () => {
        if (freed) return;
        freed = true;
        hold.busy -= 1;
        const before = hold.queue.length;
        this.pump(hold);
        if (hold.queue.length === 0 && hold.busy === 0) this.held.delete(hold.endpoint.id);
        // Its queue just fell under the refill mark (or is empty with a slot free): more may be due in the database.
        if (hold.queue.length === 0 || (before >= this.refillBelow() && hold.queue.length < this.refillBelow())) this.wake();
      };
      const attempt = this.attempt(hold.environment, hold.endpoint, row, free)
        .catch((error) => this.options.logger.warn({ err: error, delivery: row.id }, 'webhook attempt not recorded; it is sent again when its lease ends'))
        .finally(() => {
          this.inFlight.delete(attempt);
          this.claimed.delete(row.id);
          free();
        });
      this.inFlight.add(attempt);
    }
  }

  /**
   * Resolves once the outcome is written. Outcomes are written together, one write at a time
   * per environment: a write starts OUTCOME_LINGER_MS after the first outcome waiting for it,
   * or as soon as OUTCOMES_PER_WRITE wait.
   */
  private record(environment: Environment, id: string, outcome: AttemptOutcome): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      const queue = this.outcomes.get(environment) ?? [];
      queue.push({ id, outcome, done: (error) => (error ? reject(error) : resolve()) });
      this.outcomes.set(environment, queue);
      this.scheduleWrite(environment);
    });
  }

  private scheduleWrite(environment: Environment): void {
    const waiting = this.outcomes.get(environment)?.length ?? 0;
    if (waiting === 0 || this.writing.has(environment)) return;
    if (waiting >= OUTCOMES_PER_WRITE || !this.running) {
      clearTimeout(this.lingering.get(environment));
      this.lingering.delete(environment);
      void this.write(environment);
    } else if (!this.lingering.has(environment)) {
      const timer = setTimeout(() => {
        this.lingering.delete(environment);
        void this.write(environment);
      }, OUTCOME_LINGER_MS);
      this.lingering.set(environment, timer);
    }
  }

  private async write(environment: Environment): Promise<void> {
    const batch = this.outcomes.get(environment) ?? [];
    this.outcomes.set(environment, []);
    this.writing.add(environment);
    try {
      await recordAttempts(this.options.databases.environments[environment], batch);
      for (const entry of batch) entry.done();
    } catch (error) {
      for (const entry of batch) entry.done(error);
    } finally {
      this.writing.delete(environment);
      this.scheduleWrite(environment);
    }
  }

  /**
   * The request to the endpoint; with tracing on, a client span in the trace of the request
   * that caused the event, and the endpoint gets its `traceparent` (its own tracing can join).
   */
  private send(endpoint: EndpointRow, row: DeliveryRow, headers: Record<string, string>): Promise<AttemptResult> {
    const sender = this.options.sender;
    if (!tracingOn() || !row.traceparent) return sender.send(endpoint.url, headers, row.payload);
    const attributes = {
      'http.request.method': 'POST',
      'server.address': new URL(endpoint.url).hostname,
      'messaging.message.id': row.event_id,
      'bantu.webhook_endpoint': endpoint.id,
      'bantu.attempt': row.attempt + 1,
    };
    return inSpan(tracer, `webhook ${row.type}`, { kind: SpanKind.CLIENT, parent: contextOf({ traceparent: row.traceparent }), attributes }, async (span, context) => {
      injectTraceparent(headers, context);
      const result = await sender.send(endpoint.url, headers, row.payload);
      if (result.status !== null) span.setAttribute('http.response.status_code', result.status);
      if (!result.ok) span.setStatus({ code: SpanStatusCode.ERROR, message: result.error ?? `status ${result.status}` });
      return result;
    });
  }

  private openSecrets(endpoint: EndpointRow): { current: string; previous: string | null } {
    let opened = this.secrets.get(endpoint);
    if (!opened) {
      const { box } = this.options;
      const purpose = secretPurpose(endpoint.id);
      opened = { current: box.open(endpoint.secret, purpose).toString('utf8'), previous: endpoint.previous_secret ? box.open(endpoint.previous_secret, purpose).toString('utf8') : null };
      this.secrets.set(endpoint, opened);
    }
    return opened;
  }

  /** Sends one delivery and records its outcome; `sent` is called once the answer (or the failure) is in. */
  private async attempt(environment: Environment, endpoint: EndpointRow, row: DeliveryRow, sent: () => void): Promise<void> {
    const opened = this.openSecrets(endpoint);
    const secrets = [opened.current];
    if (opened.previous && endpoint.previous_expires_at && endpoint.previous_expires_at.getTime() > Date.now()) secrets.push(opened.previous);
    const headers = signedHeaders(secrets, row.event_id, Math.floor(Date.now() / 1000), row.payload);
    const result = await this.send(endpoint, row, headers);
    sent();
    const db = this.options.databases.environments[environment];
    const base = { responseStatus: result.status, error: result.error, durationMs: result.durationMs };
    if (result.ok) {
      await this.record(environment, row.id, { ...base, status: 'succeeded', nextAttemptAt: null, firstFailedAt: row.first_failed_at });
      this.options.observe?.(result, 'succeeded');
      return;
    }
    const now = Date.now();
    const firstFailedAt = row.first_failed_at ?? new Date(now);
    if (now - firstFailedAt.getTime() < this.options.retryWindowMs) {
      const next = new Date(now + backoffMs(row.attempt + 1, this.options.retryBaseMs));
      await this.record(environment, row.id, { ...base, status: 'pending', nextAttemptAt: next, firstFailedAt });
      this.options.observe?.(result, 'retrying');
      return;
    }
    await this.record(environment, row.id, { ...base, status: 'failed', nextAttemptAt: null, firstFailedAt });
    this.options.observe?.(result, 'failed');
    if (await disableEndpoint(db, endpoint.id)) {
      this.options.logger.warn({ webhook: endpoint.id, tenant: endpoint.tenant_id, environment }, 'webhook endpoint disabled after its retry window');
      await this.options.onDisabled?.(environment, endpoint, result.error);
    }
  }
}
