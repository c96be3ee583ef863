import type { Logger } from 'pino';
import { AppError, Errors } from '../../../core/errors.ts';
import type { ReadThroughCache } from '../../../core/ports.ts';
import type { User } from './users.ts';

/**
 * Recently read users, for GET /v1/users/me: the call every frontend makes on every page,
 * which would otherwise cost a database transaction each time. Entries live a few seconds;
 * every change drops the user's entry after its commit, for every process (the cache is
 * Redis when several processes serve, see RedisReadThroughCache), so the next read anywhere
 * sees it.
 *
 * The cache never fails a request: when it cannot answer (Redis down) reads go to the
 * database. An invalidation that Redis could not take leaves the old entry at most `ttlMs`,
 * which is why entries stay short-lived even though writers invalidate them.
 */
export interface UserLookup {
  user: User | undefined;
  /** For `remember` after a miss; null when the cache could not be read (then nothing is kept). */
  ticket: string | null;
}

export class UserCache {
  constructor(
    private readonly cache: ReadThroughCache,
    private readonly logger: Pick<Logger, 'warn' | 'error'>,
    private readonly ttlMs = 5_000,
  ) {}

  private key(environment: string, tenantId: string, userId: string): string {
    return `user:${environment}:${tenantId}:${userId}`;
  }

  async lookup(environment: string, tenantId: string, userId: string): Promise<UserLookup> {
    try {
      const read = await this.cache.read(this.key(environment, tenantId, userId));
      return { user: read.value === undefined ? undefined : (JSON.parse(read.value) as User), ticket: read.ticket };
    } catch (error) {
      this.bypassed(error, 'read');
      return { user: undefined, ticket: null };
    }
  }

  /** After a miss, with the lookup's ticket: the user as just read from the database. */
  async remember(environment: string, tenantId: string, user: User, ticket: string | null): Promise<void> {
    if (ticket === null) return;
    try {
      await this.cache.fill(this.key(environment, tenantId, user.id), ticket, JSON.stringify(user), this.ttlMs);
    } catch (error) {
      this.bypassed(error, 'fill');
    }
  }

  /** After a change to the user committed (or failed: then it costs one database read). */
  async forget(environment: string, tenantId: string, userId: string): Promise<void> {
    try {
      await this.cache.invalidate(this.key(environment, tenantId, userId));
    } catch (error) {
      // Rare (Redis lost between the commit and this call), and bounded by the entries' TTL.
      this.logger.warn({ err: error, user_id: userId }, `a cached user could not be dropped; it may be served for up to ${this.ttlMs} ms`);
    }
  }

  private bypassed(error: unknown, what: string): void {
    // Redis being down is logged once by its connection and shown by /readyz; anything else is a bug.
    if (error instanceof AppError && error.definition === Errors.unavailable) return;
    this.logger.error({ err: error }, `user cache ${what} failed; read from the database`);
  }
}
