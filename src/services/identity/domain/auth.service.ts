import type { Logger } from 'pino';
import type { Databases, Tx } from '../../../adapters/db/pg.ts';
import { tenantBatch, withTenant } from '../../../adapters/db/pg.ts';
import { AppError, Errors, fail } from '../../../core/errors.ts';
import { newId } from '../../../core/ids.ts';
import type { CounterStore, Mailer } from '../../../core/ports.ts';
import type { Environment } from '../../../core/principal.ts';
import * as sessionsRepo from '../repo/sessions.repo.ts';
import * as usersRepo from '../repo/users.repo.ts';
import { type AuditLog, actorFor, type RequestContext } from './audit.ts';
import type { LoginThrottle } from './login-throttle.ts';
import type { PasswordHasher } from './passwords.ts';
import type { TokenRevocations } from './revocations.ts';
import type { TokenService } from './tokens.service.ts';
import type { UserCache } from './user-cache.ts';
import { hashToken, type KeyPrincipal, newOpaqueToken, normaliseEmail, toUser, type User, type UserPrincipal } from './users.ts';

/**
 * Register, login, refresh, logout and password recovery. Application keys may call all
 * of these (they are how a frontend signs its users in); the key decides tenant and environment.
 *
 * Sessions: a login opens a family of refresh tokens. Each refresh spends the presented
 * token and issues the next one in the family; presenting a spent token again means it was
 * copied, so the whole family is revoked (OAuth 2.0 Security BCP, refresh token rotation).
 */
export const REFRESH_TOKEN_DAYS = 30;
export const RESET_TOKEN_MS = 60 * 60_000;
const FORGOT_LIMIT = { max: 5, windowMs: 60 * 60_000 };

export interface AuthResult {
  user: User;
  access_token: string;
  refresh_token: string;
  token_type: 'Bearer';
  expires_in: number;
}

export interface AuthDeps {
  databases: Databases;
  tokens: TokenService;
  passwords: PasswordHasher;
  throttle: LoginThrottle;
  counters: CounterStore;
  audit: AuditLog;
  cache: UserCache;
  revocations: TokenRevocations;
  mailer: Mailer;
  /** Base URL for links in mails (BANTU_PUBLIC_URL, or the gateway's URL). */
  linkBase: () => string;
  logger: Logger;
}

export class AuthService {
  constructor(private readonly deps: AuthDeps) {}

  private db(environment: Environment) {
    return this.deps.databases.environments[environment];
  }

  /** Opens a new session (or continues `familyId`) for the user inside `trx`. */
  async issue(trx: Tx, user: usersRepo.UserRow, environment: Environment, familyId = newId('ses')): Promise<AuthResult> {
    const session = this.newRefreshToken(user, familyId);
    await sessionsRepo.insertRefreshToken(trx, session.row);
    return this.result(user, environment, familyId, session.token);
  }

  /** A fresh refresh token of the family, and the row that stores its hash. */
  private newRefreshToken(user: usersRepo.UserRow, familyId: string): { token: string; row: sessionsRepo.NewRefreshToken } {
    const token = newOpaqueToken('rt');
    return {
      token,
      row: {
        id: newId('rtk'),
        tenant_id: user.tenant_id,
        user_id: user.id,
        family_id: familyId,
        hash: hashToken(token),
        expires_at: new Date(Date.now() + REFRESH_TOKEN_DAYS * 86_400_000),
      },
    };
  }

  /** The answer to a login, register or refresh: the user and a signed access token beside the refresh token. */
  private result(user: usersRepo.UserRow, environment: Environment, familyId: string, refreshToken: string): AuthResult {
    const access = this.deps.tokens.sign({ userId: user.id, tenantId: user.tenant_id, environment, role: user.role, sessionId: familyId });
    return { user: toUser(user), access_token: access.token, refresh_token: refreshToken, token_type: 'Bearer', expires_in: access.expiresIn };
  }

  async register(principal: KeyPrincipal, input: { email: string; password: string; name: string }, context: RequestContext): Promise<AuthResult> {
    const email = normaliseEmail(input.email);
    const passwordHash = await this.deps.passwords.hash(input.password);
    try {
      // One transaction: the user, its first session and the audit entry exist together or not at all.
      return await withTenant(this.db(principal.environment), principal.tenantId, async (trx) => {
        const user = await usersRepo.insertUser(trx, {
          id: newId('usr'),
          tenant_id: principal.tenantId,
          email,
          name: input.name.trim(),
          role: 'user',
          password_hash: passwordHash,
        });
        await this.deps.audit.record(trx, principal.tenantId, {
          type: 'user_created',
          actor: actorFor(principal),
          ip: context.ip,
          detail: { user_id: user.id, email, via: 'register' },
        });
        return this.issue(trx, user, principal.environment);
      });
    } catch (error) {
      if (usersRepo.isUniqueViolation(error)) fail(Errors.emailTaken, 'An account with this email already exists');
      throw error;
    }
  }

  async login(principal: KeyPrincipal, input: { email: string; password: string }, context: RequestContext): Promise<AuthResult> {
    const email = normaliseEmail(input.email);
    const account = `${principal.environment}:${principal.tenantId}:${email.toLowerCase()}`;
    const { throttle, audit } = this.deps;
    try {
      await throttle.check(account, context.ip);
    } catch (error) {
      // Only a refusal is a security event; the counter store being down (503) is not.
      if (!(error instanceof AppError && error.definition === Errors.rateLimited)) throw error;
      await audit.recordAlone(principal.environment, principal.tenantId, { type: 'login_throttled', actor: actorFor(principal), ip: context.ip, detail: { email } });
      throw error;
    }
    // A login is the hot path argon2 is meant to dominate: its database work is two
    // pipelined batches, one round trip each (tenantBatch), not two interactive transactions.
    const db = this.db(principal.environment);
    const [matches] = await tenantBatch(db, principal.tenantId, [usersRepo.userByEmailSelect(principal.tenantId, email)]);
    const found = matches[0];
    // An unknown email costs one argon2 verification too, so both answers take about as long.
    const ok = found ? await this.deps.passwords.verify(found.password_hash, input.password) : await this.deps.passwords.verifyDummy(input.password);
    if (!found || !ok) {
      await throttle.failed(account, context.ip);
      await audit.recordAlone(principal.environment, principal.tenantId, {
        type: 'login_failed',
        actor: actorFor(principal),
        ip: context.ip,
        detail: { email, ...(found ? { user_id: found.id } : {}) },
      });
      fail(Errors.invalidCredentials, 'Wrong email or password');
    }
    await throttle.succeeded(account);
    const familyId = newId('ses');
    const session = this.newRefreshToken(found, familyId);
    const [locked] = await tenantBatch(db, principal.tenantId, [
      sessionsRepo.loginSessionInsert(
        found.id,
        session.row,
        audit.row(principal.tenantId, { type: 'login_succeeded', actor: { type: 'user', id: found.id }, ip: context.ip, detail: { via: principal.kind } }),
      ),
    ]);
    // Deleted while the password was checked: nothing was written.
    const user = locked[0];
    if (!user) fail(Errors.invalidCredentials, 'Wrong email or password');
    return this.result(user, principal.environment, familyId, session.token);
  }

  async refresh(principal: KeyPrincipal, input: { refresh_token: string }, context: RequestContext): Promise<AuthResult> {
    const hash = hashToken(input.refresh_token);
    let ended: string | undefined;
    const outcome = await withTenant(this.db(principal.environment), principal.tenantId, async (trx) => {
      const token = await sessionsRepo.lockRefreshTokenByHash(trx, principal.tenantId, hash);
      if (!token) return { kind: 'invalid' as const };
      if (token.used_at || token.revoked_at) {
        // A spent token presented again: someone holds a copy. End the whole session.
        const revoked = await sessionsRepo.revokeFamily(trx, principal.tenantId, token.family_id);
        ended = token.family_id;
        if (token.used_at) {
          await this.deps.audit.record(trx, principal.tenantId, {
            type: 'refresh_token_reused',
            actor: { type: 'user', id: token.user_id },
            ip: context.ip,
            detail: { session_id: token.family_id, revoked },
          });
        }
        return { kind: 'invalid' as const };
      }
      if (token.expires_at.getTime() <= Date.now()) return { kind: 'invalid' as const };
      const user = await usersRepo.findUser(trx, principal.tenantId, token.user_id);
      if (!user) return { kind: 'invalid' as const };
      await sessionsRepo.markRefreshTokenUsed(trx, principal.tenantId, token.id);
      return { kind: 'ok' as const, result: await this.issue(trx, user, principal.environment, token.family_id) };
    });
    // After the commit, so a detected reuse keeps its revocation: the session's access tokens die with it.
    if (ended) await this.deps.revocations.sessionsEnded([ended]);
    if (outcome.kind !== 'ok') fail(Errors.invalidToken, 'The refresh token is invalid, expired or already used');
    return outcome.result;
  }

  /**
   * Ends the session the refresh token belongs to: its refresh tokens, and its access tokens
   * in every process. Answers the same whether or not the token was known.
   */
  async logout(principal: UserPrincipal, input: { refresh_token: string }): Promise<void> {
    const ended = await withTenant(this.db(principal.environment), principal.tenantId, async (trx) => {
      const token = await sessionsRepo.lockRefreshTokenByHash(trx, principal.tenantId, hashToken(input.refresh_token));
      if (!token || token.user_id !== principal.userId) return null;
      await sessionsRepo.revokeFamily(trx, principal.tenantId, token.family_id);
      return token.family_id;
    });
    if (ended) await this.deps.revocations.sessionsEnded([ended]);
  }

  /**
   * Starts a password reset. Always resolves the same way; a known address gets a mail
   * with a single-use token. The mail is sent after the answer, so its delivery time
   * tells nothing about whether the address is known.
   */
  async forgot(principal: KeyPrincipal, input: { email: string }, context: RequestContext): Promise<void> {
    const email = normaliseEmail(input.email);
    const limitKey = `forgot:${principal.environment}:${principal.tenantId}:${email.toLowerCase()}`;
    let state: { count: number };
    try {
      state = await this.deps.counters.increment(limitKey, FORGOT_LIMIT.windowMs);
    } catch (error) {
      // The answer is 202 whatever happens (it must not tell known addresses apart). Without
      // the counter no mail goes out: unlimited mails would make a mail bomb of an outage.
      this.deps.logger.warn({ err: error }, 'password reset mail not sent: the rate-limit counters are unavailable');
      return;
    }
    if (state.count > FORGOT_LIMIT.max) return; // a mail bomb stops here, silently
    const token = newOpaqueToken('prt');
    const user = await withTenant(this.db(principal.environment), principal.tenantId, async (trx) => {
      const found = await usersRepo.findUserByEmail(trx, principal.tenantId, email);
      if (!found) return null;
      await sessionsRepo.insertPasswordReset(trx, {
        id: newId('prs'),
        tenant_id: principal.tenantId,
        user_id: found.id,
        hash: hashToken(token),
        expires_at: new Date(Date.now() + RESET_TOKEN_MS),
      });
      await this.deps.audit.record(trx, principal.tenantId, { type: 'password_reset_requested', actor: actorFor(principal), ip: context.ip, detail: { user_id: found.id } });
      return found;
    });
    if (!user) return;
    const link = `${this.deps.linkBase().replace(/\/$/, '')}/reset-password?token=${encodeURIComponent(token)}`;
    this.deps.mailer
      .send({
        to: user.email,
        subject: 'Reset your password',
        text: [
          `Hello ${user.name},`,
          '',
          'Someone asked to reset the password of your account. If it was you, use this token within one hour:',
          '',
          token,
          '',
          `or open this link: ${link}`,
          '',
          'If it was not you, ignore this mail: your password stays as it is.',
          '',
        ].join('\n'),
      })
      .catch((error: unknown) => this.deps.logger.error({ err: error, user_id: user.id }, 'password reset mail could not be sent'));
  }

  async reset(principal: KeyPrincipal, input: { token: string; password: string }, context: RequestContext): Promise<void> {
    const passwordHash = await this.deps.passwords.hash(input.password);
    const user = await withTenant(this.db(principal.environment), principal.tenantId, async (trx) => {
      const reset = await sessionsRepo.lockPasswordResetByHash(trx, principal.tenantId, hashToken(input.token));
      if (!reset || reset.used_at || reset.expires_at.getTime() <= Date.now()) return null;
      const user = await usersRepo.updateUser(trx, principal.tenantId, reset.user_id, { password_hash: passwordHash });
      if (!user) return null;
      await sessionsRepo.usePasswordResets(trx, principal.tenantId, user.id);
      const revoked = await sessionsRepo.revokeUserTokens(trx, principal.tenantId, user.id);
      await this.deps.audit.record(trx, principal.tenantId, { type: 'password_reset', actor: { type: 'user', id: user.id }, ip: context.ip, detail: { revoked_sessions: revoked.tokens } });
      return { ...user, ended: revoked.sessions };
    });
    if (!user) throw new AppError(Errors.invalidToken, 'The reset token is invalid, used or expired');
    await this.deps.cache.forget(principal.environment, principal.tenantId, user.id);
    await this.deps.revocations.sessionsEnded(user.ended);
    // Whoever proved control of the mailbox may log in again at once. The reset itself has
    // committed: if the counters cannot be cleared now, the answer is still a success.
    await this.deps.throttle.succeeded(`${principal.environment}:${principal.tenantId}:${user.email.toLowerCase()}`).catch((error: unknown) => {
      this.deps.logger.warn({ err: error, user_id: user.id }, 'password reset: failed logins of the account could not be forgiven (rate-limit counters unavailable)');
    });
  }
}
