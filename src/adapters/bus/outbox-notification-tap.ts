import type { Logger } from 'pino';
import type { BusEvent } from '../../core/events.ts';
import type { Environment } from '../../core/principal.ts';
import type { Consumer } from './outbox-consumer.ts';
import { eventIdOf } from './outbox-row.ts';

/**
 * Delivery from the notification (the `lowLatency` consumer option): the NOTIFY of an append
 * carries its event when, at the append, no transaction older than the appender's was
 * running. No row can then ever come before it in (xid, id) order that has not committed
 * before it, and PostgreSQL hands notifications over in commit order: so a listener that has
 * every earlier notification's event delivered may deliver this one at once, without reading
 * the table, in exactly the order the read would have. The read goes on behind it (it moves
 * and saves the cursor, skips what was delivered ahead, and delivers what a notification could
 * not carry: an append that had an older transaction running, an event too large for a
 * notification, anything from before the listener started). Until the read has caught up with
 * the moment the listener started (its xmin passes the xmax seen then), nothing is delivered
 * ahead. After a crash, what was delivered ahead of the saved cursor comes again: at least
 * once, as always.
 */

/** Notifications waiting for the read (delivered-ahead ids too) beyond which a listener stops delivering ahead and re-arms. */
const AHEAD_MAX = 20_000;

/** What an append's NOTIFY carries: the row's position, its type, and the event when it may be delivered from it. */
export interface Note {
  id: number;
  xid: bigint;
  type: string;
  event: BusEvent | null;
}

export function parseNote(payload: string | undefined, environment: Environment): Note | null {
  if (!payload) return null;
  try {
    const note = JSON.parse(payload) as { id?: unknown; xid?: unknown; type?: unknown; event?: BusEvent };
    if (typeof note.id !== 'number' || typeof note.xid !== 'string' || typeof note.type !== 'string') return null;
    const event = note.event && note.event.environment === environment ? note.event : null;
    return { id: note.id, xid: BigInt(note.xid), type: note.type, event };
  } catch {
    return null;
  }
}

/** (xid, id) order. */
function compare(a: { xid: bigint; id: number }, b: { xid: bigint; id: number }): number {
  return a.xid === b.xid ? a.id - b.id : a.xid < b.xid ? -1 : 1;
}

/**
 * One `lowLatency` consumer in one environment: the notifications not yet known to be
 * delivered, in commit order, and the ids delivered from them ahead of the read. Handler
 * calls of the read and of the notifications go one at a time (`exclusive`).
 */
export class NotificationTap {
  /** Set once the read has caught up with the listener's start; until then, nothing is delivered ahead. */
  enabled = false;
  /** The xmax seen when the listener started (or re-armed): the read's xmin must pass it. */
  armedAt: bigint | null = null;
  /** Notifications not yet delivered, in commit order. */
  readonly queue: Note[] = [];
  /** Ids delivered from a notification that the read has not passed yet. */
  readonly ahead = new Set<number>();
  /** The read's position: every row up to it has been delivered. */
  position: { xid: bigint; id: number } = { xid: 0n, id: 0 };
  private chain: Promise<void> = Promise.resolve();
  private draining = false;
  /** Counts re-arms: only the latest one's xmax counts. */
  private generation = 0;

  constructor(
    readonly consumer: Consumer,
    private readonly log: Logger,
    private readonly signal: AbortSignal,
    /** Reads the current xmax on the listener's connection and hands it over (not at all if the listener is gone). */
    private readonly rearm: (armAt: (xmax: bigint) => void) => void,
  ) {}

  /** Runs `work` when no other handler call of this consumer and environment is under way. */
  async exclusive<T>(work: () => Promise<T>): Promise<T> {
    const previous = this.chain;
    let release = () => {};
    this.chain = new Promise<void>((resolve) => {
      release = resolve;
    });
    await previous;
    try {
      return await work();
    } finally {
      release();
    }
  }

  delivered(note: { id: number; xid: bigint }): boolean {
    return this.ahead.has(note.id) || compare(note, this.position) <= 0;
  }

  /** A notification arrived (in commit order). */
  push(note: Note): void {
    if (this.delivered(note)) return;
    if (this.queue.length + this.ahead.size >= AHEAD_MAX) {
      // The read is far behind (a long transaction holds the xmin back, or it fails):
      // forget the queue, and deliver ahead again once the read has caught up.
      this.disarm('too many notifications wait for the read');
      return;
    }
    this.queue.push(note);
    this.drain();
  }

  /**
   * Stops delivering ahead, and forgets the queue, until the read has passed the xmax the
   * listener reads now: every notification forgotten is of a transaction below it.
   */
  disarm(reason: string): void {
    if (this.enabled) this.log.warn({ reason }, 'delivery from notifications paused until the read catches up');
    this.enabled = false;
    this.armedAt = null;
    this.queue.length = 0;
    const generation = ++this.generation;
    this.rearm((xmax) => {
      if (this.generation === generation && !this.enabled) this.armedAt = xmax;
    });
  }

  /** The read, after a complete read whose xmin was `horizon`, with everything before it delivered. */
  caughtUp(horizon: bigint): void {
    if (this.armedAt === null || horizon < this.armedAt) return;
    this.armedAt = null;
    this.enabled = true;
    this.drain();
  }

  /** Delivers the queue's head while it is deliverable from its notification. */
  drain(): void {
    if (!this.enabled || this.draining || this.queue.length === 0) return;
    this.draining = true;
    void this.exclusive(async () => {
      try {
        while (this.enabled && !this.signal.aborted) {
          const head = this.queue[0];
          if (!head) break;
          if (this.delivered(head) || (this.consumer.types && !this.consumer.types.has(head.type))) {
            this.queue.shift();
            continue;
          }
          if (!head.event) break; // the read delivers it; later ones wait behind it
          this.ahead.add(head.id);
          try {
            await this.consumer.handler(head.event);
          } catch (error) {
            // The read delivers it, with its retries; what follows waits behind it.
            this.ahead.delete(head.id);
            head.event = null;
            this.log.warn({ err: error, event_id: eventIdOf(head.id) }, 'delivery from the notification failed; left to the read');
            break;
          }
          this.queue.shift();
        }
      } finally {
        this.draining = false;
      }
    });
  }

  /** The read passed `row` (delivered it, or found it delivered ahead). */
  passed(row: { xid: bigint; id: number }): void {
    this.ahead.delete(row.id);
    this.position = row;
  }
}
