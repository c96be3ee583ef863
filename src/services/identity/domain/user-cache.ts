import type { User } from './users.ts';

/**
 * Recently read users, for GET /v1/users/me: the call every frontend makes on every page,
 * which would otherwise cost a database transaction each time. Entries live a few seconds
 * and every change made through this process drops the user's entry at once, so a reader
 * sees its own writes; a change made by another process shows within the TTL.
 */
export class UserCache {
  private readonly entries = new Map<string, { user: User; until: number }>();

  constructor(
    private readonly ttlMs = 5_000,
    private readonly max = 10_000,
    private readonly now: () => number = Date.now,
  ) {}

  private key(environment: string, tenantId: string, userId: string): string {
    return `${environment}:${tenantId}:${userId}`;
  }

  get(environment: string, tenantId: string, userId: string): User | undefined {
    const key = this.key(environment, tenantId, userId);
    const entry = this.entries.get(key);
    if (!entry) return undefined;
    if (entry.until > this.now()) return entry.user;
    this.entries.delete(key);
    return undefined;
  }

  set(environment: string, tenantId: string, user: User): void {
    if (this.entries.size >= this.max) this.entries.clear();
    this.entries.set(this.key(environment, tenantId, user.id), { user, until: this.now() + this.ttlMs });
  }

  forget(environment: string, tenantId: string, userId: string): void {
    this.entries.delete(this.key(environment, tenantId, userId));
  }
}
