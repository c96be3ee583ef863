import type { RevocationList } from '../../core/ports.ts';

/**
 * Revocations in this process's memory: exact for one process (`npm start`), lost on restart
 * (then only access tokens issued before it, at most one lifetime old, could come back).
 * Expired entries are swept when the map grows, so it stays bounded by the revocations of
 * one token lifetime.
 */
export class MemoryRevocationList implements RevocationList {
  private readonly revoked = new Map<string, number>();

  constructor(
    private readonly sweepAbove = 10_000,
    private readonly now: () => number = Date.now,
  ) {}

  async revoke(ids: readonly string[], ttlMs: number): Promise<void> {
    const now = this.now();
    if (this.revoked.size > this.sweepAbove) for (const [id, until] of this.revoked) if (until <= now) this.revoked.delete(id);
    for (const id of ids) this.revoked.set(id, now + ttlMs);
  }

  async anyRevoked(ids: readonly string[]): Promise<boolean> {
    const now = this.now();
    return ids.some((id) => (this.revoked.get(id) ?? 0) > now);
  }
}
