import type { CacheRead, ReadThroughCache } from '../../core/ports.ts';

/**
 * The read-through cache in this process's memory (`npm start`, one process: every write goes
 * through it). Bounded: when full it is emptied, and the next reads go to the database.
 *
 * Tickets are the value of one counter that every invalidation advances; a key remembers the
 * counter at its last invalidation, and a fill with an older ticket is dropped. So a reader
 * that loaded the database before a write committed cannot put the old value back after the
 * writer's invalidation. Emptying the cache raises the floor below which every ticket is old.
 */
export class MemoryReadThroughCache implements ReadThroughCache {
  private readonly entries = new Map<string, { value: string; ticket: number; until: number }>();
  private readonly invalidatedAt = new Map<string, number>();
  private counter = 0;
  private floor = 0;

  constructor(
    private readonly max = 10_000,
    private readonly now: () => number = Date.now,
  ) {}

  private valid(key: string, ticket: number): boolean {
    return ticket >= (this.invalidatedAt.get(key) ?? this.floor);
  }

  async read(key: string): Promise<CacheRead> {
    const entry = this.entries.get(key);
    if (entry && entry.until > this.now() && this.valid(key, entry.ticket)) return { value: entry.value, ticket: String(entry.ticket) };
    if (entry) this.entries.delete(key);
    return { value: undefined, ticket: String(this.counter) };
  }

  async fill(key: string, ticket: string, value: string, ttlMs: number): Promise<void> {
    const taken = Number(ticket);
    if (!Number.isSafeInteger(taken) || !this.valid(key, taken)) return;
    if (this.entries.size >= this.max) {
      // Emptying makes this ticket too old as well: the value is simply not kept.
      this.empty();
      return;
    }
    this.entries.set(key, { value, ticket: taken, until: this.now() + Math.min(ttlMs, 3600_000) });
  }

  async invalidate(key: string): Promise<void> {
    this.counter += 1;
    this.entries.delete(key);
    if (this.invalidatedAt.size >= this.max) this.empty();
    else this.invalidatedAt.set(key, this.counter);
  }

  /** Forgets everything; every ticket handed out so far becomes too old to fill. */
  private empty(): void {
    this.entries.clear();
    this.invalidatedAt.clear();
    this.counter += 1;
    this.floor = this.counter;
  }
}
