import type { Logger } from 'pino';
import { type Databases, tenantRead } from '../../../adapters/db/pg.ts';
import { AppError, Errors } from '../../../core/errors.ts';
import type { RevocationList } from '../../../core/ports.ts';
import * as sessionsRepo from '../repo/sessions.repo.ts';
import type { AccessClaims } from './tokens.service.ts';

/**
 * Credentials that must stop working before they expire: every token of a deleted user, every
 * token of an ended session (logout, a reused refresh token, a password changed or reset), and
 * a revoked API key that some process still holds as verified in its key cache. The database is the truth (the user is gone, the session's refresh tokens are
 * revoked); the revocation list is how a token check learns it without a query. Each entry
 * is kept for one token lifetime, after which no token it revokes can still be valid anyway.
 *
 * With Redis (several processes), whatever one process revokes every other refuses at once.
 *
 * Redis down:
 * - A token check asks the database instead (the user still has this live session): one
 *   query per request for the outage, and never a token accepted unchecked. If the database
 *   cannot answer either, the request fails (5xx), never with the token accepted.
 * - A revocation is recorded after its commit (a session end must not wait on Redis, nor be
 *   lost by a rollback after Redis took it). One that Redis cannot take is refused by this
 *   process at once and retried in the background until Redis takes it or it has expired;
 *   meanwhile the other processes read the database, which already says so. Only if this
 *   process stops before Redis is back can another accept such a token, until it expires.
 */
export interface RevocationsDeps {
  list: RevocationList;
  databases: Databases;
  /** How long a revocation is kept: an access token's lifetime, plus clock skew. */
  lifetimeMs: number;
  logger: Pick<Logger, 'warn' | 'info'>;
  /** How often revocations Redis could not take are tried again. Default 2 s. */
  retryMs?: number;
  now?: () => number;
}

export class TokenRevocations {
  /** Ids Redis could not take yet, with when they expire. */
  private readonly pending = new Map<string, number>();
  private timer: NodeJS.Timeout | undefined;
  private closed = false;
  private readonly now: () => number;

  constructor(private readonly deps: RevocationsDeps) {
    this.now = deps.now ?? Date.now;
  }

  /** After the deletion committed. */
  userDeleted(userId: string): Promise<void> {
    return this.record([userKey(userId)]);
  }

  /** After the sessions' refresh tokens were revoked and that committed. */
  sessionsEnded(sessionIds: readonly string[]): Promise<void> {
    return this.record(sessionIds.map(sessionKey));
  }

  /** After the key's revocation committed: kept as long as any process may hold the key as verified. */
  keyRevoked(keyId: string, cachedForMs: number): Promise<void> {
    return this.record([keyKey(keyId)], cachedForMs);
  }

  /**
   * Whether a key a process holds as verified was revoked since. Undefined when Redis cannot
   * tell: the caller then asks the database, which knows.
   */
  async isKeyRevoked(keyId: string): Promise<boolean | undefined> {
    const id = keyKey(keyId);
    if ((this.pending.get(id) ?? 0) > this.now()) return true;
    try {
      return await this.deps.list.anyRevoked([id]);
    } catch (error) {
      if (!(error instanceof AppError && error.definition === Errors.unavailable)) throw error;
      return undefined;
    }
  }

  /** Whether a verified token must be refused all the same. Rejects only when neither the list nor the database can answer. */
  async isRevoked(claims: AccessClaims): Promise<boolean> {
    const ids = [userKey(claims.userId), sessionKey(claims.sessionId)];
    if (this.pending.size > 0 && ids.some((id) => (this.pending.get(id) ?? 0) > this.now())) return true;
    try {
      return await this.deps.list.anyRevoked(ids);
    } catch (error) {
      if (!(error instanceof AppError && error.definition === Errors.unavailable)) throw error;
      const db = this.deps.databases.environments[claims.environment];
      const live = await tenantRead(db, claims.tenantId, sessionsRepo.liveSessionSelect(claims.tenantId, claims.userId, claims.sessionId));
      return live.length === 0;
    }
  }

  close(): void {
    this.closed = true;
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
  }

  private async record(ids: string[], ttlMs = this.deps.lifetimeMs): Promise<void> {
    if (ids.length === 0) return;
    try {
      await this.deps.list.revoke(ids, ttlMs);
    } catch (error) {
      const until = this.now() + ttlMs;
      for (const id of ids) this.pending.set(id, until);
      this.deps.logger.warn({ err: error, revocations: ids.length }, 'revocations kept in this process until Redis takes them; other processes read the database meanwhile');
      this.schedule();
    }
  }

  private schedule(): void {
    if (this.timer || this.closed) return;
    this.timer = setTimeout(() => {
      this.timer = undefined;
      void this.retry();
    }, this.deps.retryMs ?? 2000);
    this.timer.unref();
  }

  private async retry(): Promise<void> {
    const now = this.now();
    for (const [id, until] of this.pending) if (until <= now) this.pending.delete(id);
    const due = [...this.pending];
    try {
      // Each with what is left of its lifetime: a late write never keeps an id longer than needed.
      await Promise.all(due.map(([id, until]) => this.deps.list.revoke([id], until - now)));
      for (const [id] of due) this.pending.delete(id);
      if (due.length > 0) this.deps.logger.info({ revocations: due.length }, 'revocations kept in this process are now in Redis');
    } catch {
      // Still down: try again later.
    }
    if (this.pending.size > 0) this.schedule();
  }
}

const userKey = (userId: string) => `user:${userId}`;
const sessionKey = (sessionId: string) => `session:${sessionId}`;
const keyKey = (keyId: string) => `key:${keyId}`;
