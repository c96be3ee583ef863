import { type QueryExecutorProvider, type RawBuilder, sql } from 'kysely';
import type { BusEvent, NewEvent } from './events.ts';
import type { Environment } from './principal.ts';

/**
 * Ports: the interfaces services depend on. Each has drivers in src/adapters/<port>/,
 * picked by configuration, and every driver passes the same contract tests.
 */

/** A transaction handle of the environment database the event belongs to. */
export type TransactionHandle = unknown;

export type EventHandler = (event: BusEvent) => Promise<void>;

/** Handles several events at once (in delivery order), so their cost can be shared (one commit, one fsync of a folder). */
export type BatchEventHandler = (events: BusEvent[]) => Promise<void>;

/**
 * Thrown by an event handler when the EVENT is at fault (what it names is missing, or is not
 * what it claims): trying again cannot help, so the bus sets it aside after its tries. Any
 * other failure may be the handler's own store or database being down for a while.
 */
export class PoisonEventError extends Error {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'PoisonEventError';
  }
}

export interface ConsumerOptions {
  /** Only these event types reach the handler (the cursor still moves past the others). */
  types?: readonly string[];
  /** Tries before an event is set aside as a dead letter. Default 5. */
  maxAttempts?: number;
  /**
   * Which failures may end as a dead letter.
   * - `'any-failure'` (default): every failure counts toward `maxAttempts`. For consumers whose
   *   work has no outside dependency that can be down (a failure there is a bug), so that one
   *   bad event costs a few seconds and never stops the stream.
   * - `'poison-only'`: only a `PoisonEventError` counts. Any other failure is taken as the
   *   consumer's own store or database being down, and the event is retried with backoff
   *   (capped, see the driver) for as long as that lasts, holding later events back: they
   *   would fail the same way, and setting them aside would lose them for good.
   */
  deadLetter?: 'any-failure' | 'poison-only';
  /**
   * Latency first: hand each event over as soon as the driver learns of its commit, instead
   * of at its next read, wherever it can do so without changing the delivery order (the
   * outbox delivers from the commit's notification). Delivery stays at least once and in the
   * same order; it costs some work per event, so it is for latency-bound consumers (the
   * notifications relay). `consume` only (`consumeBatch` ignores it). A driver with no faster
   * path ignores it: its consumers get the same events in the same order, a little later.
   */
  lowLatency?: boolean;
  /**
   * False: `start` leaves this consumer stopped in this process until `startConsumer` (a
   * work consumer that only the leader of the installation runs). Default true. Not with
   * `lowLatency`: notifications feed such a consumer from the bus's start on.
   */
  autoStart?: boolean;
  /**
   * A consumer of this process alone, from the moment it starts: no durable cursor, nothing
   * replayed after a restart, and one more process with the same consumer gets every event
   * too. For each notifications instance, which relays live events to its own sockets (a
   * reconnecting socket asks for the history with `since`, read from the bus's history).
   */
  ephemeral?: boolean;
}

/** An event a consumer set aside. */
export interface DeadLetter {
  event: BusEvent;
  /** Tries so far (the bus's, plus every redelivery). */
  attempts: number;
  /** The last failure's message. */
  error: string;
  set_aside_at: string;
}

export interface EventFilter {
  tenantId: string;
  /** Only the events of this owner's subjects. */
  ownerId?: string;
}

export interface ConsumerStatus {
  consumer: string;
  environment: Environment;
  pending: number;
  lastDeliveredAt: string | null;
  deadLetters: number;
  /** When the oldest pending event committed (null when none is pending): how far behind the consumer is. */
  oldestPendingAt?: string | null;
  /** Set while the consumer keeps failing on the event in hand (and retries it); null once it passes. */
  failing?: { since: string; attempts: number; error: string } | null;
}

/**
 * The event bus. `append` writes into the caller's transaction, so an event exists if and
 * only if the change it describes committed. Consumers are durable: each keeps a cursor
 * in the database, resumes after a restart without skipping or losing an event, and gets
 * each event at least once (it must be idempotent by `event_id`).
 *
 * Invariants every driver keeps (and the contract test in src/adapters/bus checks):
 * - Nothing appended is visible (to a consumer or `readSince`) before its transaction
 *   commits, and nothing of a rolled back one ever is.
 * - Per subject, commit order: the events of writers that each called `lockSubject` on the
 *   same subject first reach every consumer in the order their transactions committed (a
 *   redelivery, at least once, may repeat an event already seen).
 * - A failing event is retried with backoff; it becomes a dead letter only as its consumer's
 *   `deadLetter` option says, and a dead letter never blocks the events behind it.
 */
export interface EventBus {
  /**
   * Writes the event into `trx`, the writer's transaction of `environment`'s database: it is
   * published when, and only when, that transaction commits. Events of one subject keep their
   * commit order if each writer called `lockSubject` first; others have no order between them.
   */
  append(trx: TransactionHandle, environment: Environment, event: NewEvent): Promise<BusEvent>;
  /**
   * The write of `append` as one statement, for a caller that sends its transaction's
   * statements together (tenantBatch) instead of awaiting each: the event is published when,
   * and only when, the transaction of `environment`'s database that runs it commits.
   */
  appendStatement(environment: Environment, event: NewEvent): RawBuilder<unknown>;
  consume(name: string, handler: EventHandler, options?: ConsumerOptions): void;
  /**
   * Like `consume`, with the events of one read handed over together. When a batch fails,
   * its events are retried one by one, so a poison event is set aside alone.
   */
  consumeBatch(name: string, handler: BatchEventHandler, options?: ConsumerOptions): void;
  /**
   * Events after `afterEventId` (exclusive; from the start when null), in delivery order,
   * optionally only one tenant's (and one owner's). Null when `afterEventId` is unknown,
   * pruned, or outside the filter: the caller cannot resume from it.
   */
  readSince(environment: Environment, afterEventId: string | null, limit: number, filter?: EventFilter): Promise<BusEvent[] | null>;
  /** Per environment; with `tenantId`, counts only that tenant's events (tenants never see each other's activity). */
  status(name: string, tenantId?: string): Promise<ConsumerStatus[]>;
  /**
   * Hands each of a consumer's dead letters to `handler` once more (every environment,
   * delivery order), for when their cause is fixed. One that passes stops being a dead
   * letter; one that fails stays, with the new error. Safe while the consumer runs: handlers
   * are idempotent, and the consumer never goes back to an event it set aside.
   */
  redeliverDeadLetters(name: string, handler: EventHandler): Promise<{ delivered: DeadLetter[]; remaining: DeadLetter[] }>;
  start(): Promise<void>;
  /**
   * Starts delivery to a registered consumer in this process, after `start`; it resumes at
   * the consumer's durable cursor, wherever another process left it. A no-op while it runs.
   */
  startConsumer(name: string): void;
  /**
   * Stops delivery to one consumer in this process, at once; resolves when its handler has
   * returned (the event in hand finishes, nothing after it starts). Its cursor stays, so
   * another process (or `startConsumer`) goes on from there. A no-op while it is stopped.
   */
  stopConsumer(name: string): Promise<void>;
  close(): Promise<void>;
}

/**
 * Serialises the writers of one subject (a file) until the end of their transaction, so that
 * the bus delivers the subject's events in commit order. Call it as the FIRST statement of
 * the transaction, before anything that writes, or that order is lost.
 *
 * It is the writer's side of the port, the same for every driver: events are written to the
 * environment database's outbox, in the writer's transaction, whatever then carries them
 * (the outbox's own dispatcher, or a relay to NATS), and they are delivered in the order of
 * their transaction ids. An advisory lock is taken without a transaction id, so the id is
 * assigned only once the lock is held: the ids of one subject's writers then follow their
 * commit order. (A row lock is not enough: UPDATE and SELECT FOR UPDATE take their id before
 * waiting, and two waiters may be granted the row in the other order.)
 */
export async function lockSubject(trx: TransactionHandle, subject: string): Promise<void> {
  await sql`select pg_advisory_xact_lock(hashtextextended(${subject}, 0))`.execute(trx as QueryExecutorProvider);
}

/** One mail. `text` is always sent; `html` is an optional alternative part. */
export interface MailMessage {
  to: string;
  subject: string;
  text: string;
  html?: string;
}

/**
 * Outgoing mail. `send` resolves once the driver has accepted the message (written the
 * .eml file, or the SMTP server answered 250); it rejects when it could not. Drivers never
 * log a message's body: mails carry secrets such as password reset tokens.
 */
export interface Mailer {
  send(message: MailMessage): Promise<void>;
  close(): Promise<void>;
}

/** A counter's state: hits in the current window and milliseconds until that window ends. */
export interface CounterState {
  count: number;
  resetInMs: number;
}

/**
 * Fixed-window counters with expiry, the building block of rate limits (login throttling).
 * A window starts at the first hit of a key and lasts `windowMs`; when it ends the key
 * counts from zero again. The in-memory driver is exact within one process; a shared
 * driver (Redis) makes the limits hold across processes.
 */
export interface CounterStore {
  /** The key's state without changing it; `{count: 0, resetInMs: 0}` when unknown or expired. */
  get(key: string): Promise<CounterState>;
  /** Adds one hit and returns the new state. */
  increment(key: string, windowMs: number): Promise<CounterState>;
  reset(key: string): Promise<void>;
}

/**
 * Ids that stop being valid before their own expiry (a deleted user, an ended session), each
 * remembered for `ttlMs`: long enough that whatever it revoked has expired by itself (an
 * access token's lifetime). The in-memory driver serves one process; a shared driver (Redis)
 * makes a revocation made by one process hold in every other at once.
 *
 * Invariants every driver keeps (see src/adapters/cache/revocation-list.contract.ts): once
 * `revoke` resolves, `anyRevoked` of those ids answers true in every process sharing the list,
 * until `ttlMs` has passed; a revoke of an id already revoked only extends it. A driver that
 * cannot answer rejects (it never answers false for an id it could not look up).
 */
export interface RevocationList {
  revoke(ids: readonly string[], ttlMs: number): Promise<void>;
  /** True when at least one of `ids` is revoked. */
  anyRevoked(ids: readonly string[]): Promise<boolean>;
}

/** What a cache read found: the value, or a miss with the ticket its `fill` needs. */
export interface CacheRead {
  value: string | undefined;
  /** Opaque; handed to `fill` after a miss, so that a fill that lost a race with `invalidate` is never served. */
  ticket: string;
}

/**
 * A read-through cache of strings (JSON) in front of the database, invalidated by the writers.
 * The caller reads; on a miss it loads from the database and fills with the read's ticket.
 *
 * Invariants every driver keeps (see src/adapters/cache/read-through-cache.contract.ts):
 * - Once `invalidate(key)` resolves, no read anywhere returns what was there before it, nor
 *   what a `fill` with a ticket taken before it stored (a reader that loaded the database
 *   before the write committed cannot put the old value back).
 * - A filled value is served for at most `ttlMs` (at most an hour), then missed.
 * - A driver that cannot answer rejects; the caller then goes to the database.
 */
export interface ReadThroughCache {
  read(key: string): Promise<CacheRead>;
  fill(key: string, ticket: string, value: string, ttlMs: number): Promise<void>;
  invalidate(key: string): Promise<void>;
}

/** Where a stored blob lives, what it holds and when it was last written. */
export interface BlobInfo {
  key: string;
  size: number;
  modifiedAt: Date;
}

/** What `put` stored. `key` is the content's lowercase hex SHA-256: the blob's name from then on. */
export interface StoredBlob {
  key: string;
  sha256: string;
  size: number;
}

/**
 * Bytes written and durable, but not yet under their key: `commit` makes them a blob (as
 * `put` would have), `discard` removes them. For uploads whose request can still fail after
 * the content ended (a multipart body cut short after its file part): then nothing is kept,
 * and no blob that another upload may share is ever deleted. Exactly one of the two is called.
 */
export interface StagedBlob extends StoredBlob {
  commit(): Promise<StoredBlob>;
  discard(): Promise<void>;
}

/** An inclusive byte range, as HTTP Range speaks it: `{start: 0, end: 99}` is the first 100 bytes. */
export interface ByteRange {
  start: number;
  end: number;
}

/** Thrown by `BlobStore.put` when the source is longer than `maxBytes`; nothing is kept. */
export class BlobTooLargeError extends Error {
  constructor(readonly maxBytes: number) {
    super(`the content is larger than ${maxBytes} bytes`);
    this.name = 'BlobTooLargeError';
  }
}

/**
 * Immutable blobs, one store per environment (physically separate roots).
 *
 * Invariants every driver keeps (and the contract test in src/adapters/blob checks):
 * - `put` streams: it hashes and writes the bytes as they arrive and never holds the whole
 *   content in memory. It resolves only once the blob is durable under its key; if it
 *   rejects (source error, `maxBytes` exceeded, abort), nothing new is visible under any key.
 * - Blobs are content-addressed (`key` is the SHA-256 in hex; a driver maps it to its own
 *   object names), so a blob never changes once written, and equal bytes are stored once.
 * - `get` of a missing key rejects with an error whose `code` is `ENOENT`; `stat` answers null.
 * - A staged blob is invisible (`get`, `stat`, `list`) until committed; discarded, it leaves
 *   nothing behind.
 * - `put` refreshes `modifiedAt` even when the bytes were already there, so a sweep that only
 *   deletes unreferenced blobs older than a grace period never races an upload in flight.
 */
export interface BlobStore {
  put(source: AsyncIterable<Uint8Array>, options?: { maxBytes?: number }): Promise<StoredBlob>;
  /** Like `put`, but what it wrote becomes visible only on `commit`. */
  stage(source: AsyncIterable<Uint8Array>, options?: { maxBytes?: number }): Promise<StagedBlob>;
  get(key: string, range?: ByteRange): Promise<NodeJS.ReadableStream & AsyncIterable<Buffer>>;
  stat(key: string): Promise<BlobInfo | null>;
  delete(key: string): Promise<void>;
  /** Every blob, in no particular order (for sweeps and verification). */
  list(): AsyncIterable<BlobInfo>;
  /**
   * Where a store can copy a blob of `source` without the bytes passing through this process
   * (S3 to S3 on one service): the copied blob (its key the same, its size checked, its bytes
   * not hashed again), or null when it cannot from that source, and the caller streams it.
   * A missing key is an ENOENT error, as for `get`.
   */
  copyFrom?(source: BlobStore, key: string): Promise<StoredBlob | null>;
}
