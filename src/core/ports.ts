import type { Environment } from './principal.ts';
import type { BusEvent, NewEvent } from './events.ts';

/**
 * Ports: the interfaces services depend on. Each has drivers in src/adapters/<port>/,
 * picked by configuration, and every driver passes the same contract tests.
 */

/** A transaction handle of the environment database the event belongs to. */
export type TransactionHandle = unknown;

export type EventHandler = (event: BusEvent) => Promise<void>;

export interface ConsumerOptions {
  /** Only these event types reach the handler (the cursor still moves past the others). */
  types?: readonly string[];
  /** Tries before an event is set aside as a dead letter. Default 5. */
  maxAttempts?: number;
}

export interface ConsumerStatus {
  consumer: string;
  environment: Environment;
  pending: number;
  lastDeliveredAt: string | null;
  deadLetters: number;
}

/**
 * The event bus. `append` writes into the caller's transaction, so an event exists if and
 * only if the change it describes committed. Consumers are durable: each keeps a cursor
 * in the database, resumes after a restart without skipping or losing an event, and gets
 * each event at least once (it must be idempotent by `event_id`).
 */
export interface EventBus {
  append(trx: TransactionHandle, environment: Environment, event: NewEvent): Promise<BusEvent>;
  consume(name: string, handler: EventHandler, options?: ConsumerOptions): void;
  /** Events after `afterEventId` (exclusive; from the start when null), in delivery order. */
  readSince(environment: Environment, afterEventId: string | null, limit: number): Promise<BusEvent[] | null>;
  status(name: string): Promise<ConsumerStatus[]>;
  start(): Promise<void>;
  close(): Promise<void>;
}

/** Where a stored blob lives, what it holds and when it was last written. */
export interface BlobInfo {
  key: string;
  size: number;
  modifiedAt: Date;
}

/** What `put` stored: `key` names the blob from then on; equal bytes give the equal key. */
export interface StoredBlob {
  key: string;
  sha256: string;
  size: number;
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
 * - Blobs are content-addressed (`key` derives from the SHA-256), so a blob never changes once
 *   written, and putting the same bytes twice stores them once.
 * - `get` of a missing key rejects with an error whose `code` is `ENOENT`; `stat` answers null.
 * - `put` refreshes `modifiedAt` even when the bytes were already there, so a sweep that only
 *   deletes unreferenced blobs older than a grace period never races an upload in flight.
 */
export interface BlobStore {
  put(source: AsyncIterable<Uint8Array>, options?: { maxBytes?: number }): Promise<StoredBlob>;
  get(key: string, range?: ByteRange): Promise<NodeJS.ReadableStream & AsyncIterable<Buffer>>;
  stat(key: string): Promise<BlobInfo | null>;
  delete(key: string): Promise<void>;
  /** Every blob, in no particular order (for sweeps and verification). */
  list(): AsyncIterable<BlobInfo>;
}
