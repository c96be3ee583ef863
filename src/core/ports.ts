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
