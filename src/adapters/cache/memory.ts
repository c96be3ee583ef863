import type { CounterState, CounterStore } from '../../core/ports.ts';

/**
 * In-process counters: exact for one process, lost on restart (which only forgives some
 * failed logins). Expired windows are swept when the map grows, so an attacker cycling
 * through addresses cannot grow it without bound.
 */
export class MemoryCounterStore implements CounterStore {
  private readonly windows = new Map<string, { count: number; endsAt: number }>();

  constructor(
    private readonly maxKeys = 100_000,
    private readonly now: () => number = Date.now,
  ) {}

  async get(key: string): Promise<CounterState> {
    const window = this.windows.get(key);
    const now = this.now();
    if (!window || window.endsAt <= now) return { count: 0, resetInMs: 0 };
    return { count: window.count, resetInMs: window.endsAt - now };
  }

  async increment(key: string, windowMs: number): Promise<CounterState> {
    const now = this.now();
    let window = this.windows.get(key);
    if (!window || window.endsAt <= now) {
      if (this.windows.size >= this.maxKeys) this.sweep(now);
      window = { count: 0, endsAt: now + windowMs };
      this.windows.set(key, window);
    }
    window.count += 1;
    return { count: window.count, resetInMs: window.endsAt - now };
  }

  async reset(key: string): Promise<void> {
    this.windows.delete(key);
  }

  private sweep(now: number): void {
    for (const [key, window] of this.windows) if (window.endsAt <= now) this.windows.delete(key);
    // Still full of live windows: drop the oldest entries rather than refuse to count.
    if (this.windows.size >= this.maxKeys) {
      const excess = this.windows.size - Math.floor(this.maxKeys * 0.9);
      let dropped = 0;
      for (const key of this.windows.keys()) {
        if (dropped++ >= excess) break;
        this.windows.delete(key);
      }
    }
  }
}
