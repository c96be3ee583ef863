import type { Databases, Tx } from '../../../adapters/db/pg.ts';
import { withTenant } from '../../../adapters/db/pg.ts';
import { AppError, Errors, fail } from '../../../core/errors.ts';
import { newId } from '../../../core/ids.ts';
import { pageOf } from '../../../core/pagination.ts';
import type { Environment, TenantPrincipal } from '../../../core/principal.ts';
import * as sessionsRepo from '../repo/sessions.repo.ts';
import * as usersRepo from '../repo/users.repo.ts';
import { type AuditLog, actorFor, type RequestContext } from './audit.ts';
import type { LoginThrottle } from './login-throttle.ts';
import type { PasswordHasher } from './passwords.ts';
import type { TokenRevocations } from './revocations.ts';
import type { UserCache } from './user-cache.ts';
import { normaliseEmail, type Role, toUser, type User, type UserPrincipal } from './users.ts';

/**
 * The user's own profile (`/users/me`) and user management by the tenant's admins:
 * account keys, admin users, and application keys granted `users:read` / `users:write`.
 *
 * Visibility: a plain user sees only itself; another user's id answers 404, never 403,
 * so ids reveal nothing. An admin's role is re-read from the database on every management
 * call, so a demoted admin loses the power at once, whatever its token still says.
 */
export interface UsersDeps {
  databases: Databases;
  passwords: PasswordHasher;
  throttle: LoginThrottle;
  audit: AuditLog;
  revocations: TokenRevocations;
  cache: UserCache;
}

export interface ProfileChanges {
  name?: string;
  email?: string;
  password?: string;
  current_password?: string;
}

export interface AdminChanges {
  name?: string;
  email?: string;
  password?: string;
  role?: Role;
}

const notFound = () => new AppError(Errors.notFound, 'No such user');

/**
 * Application keys with `users:write` manage plain users only. Such a key lives in a client
 * application; if it could make admins, or reset an admin's password, a leaked CRM key
 * would become the tenant's admin power.
 */
function assertKeyMayTouch(principal: TenantPrincipal, role: Role | undefined): void {
  if (principal.kind === 'application_key' && role === 'admin') fail(Errors.forbidden, 'Application keys may not create, change or delete admin users');
}

export class UsersService {
  constructor(private readonly deps: UsersDeps) {}

  private db(environment: Environment) {
    return this.deps.databases.environments[environment];
  }

  /** The caller itself. A token of a user deleted since it was issued answers 401. */
  async me(principal: UserPrincipal): Promise<User> {
    const cached = await this.deps.cache.lookup(principal.environment, principal.tenantId, principal.userId);
    if (cached.user) return cached.user;
    const row = await withTenant(this.db(principal.environment), principal.tenantId, (trx) => usersRepo.findUser(trx, principal.tenantId, principal.userId));
    if (!row) throw new AppError(Errors.unauthorized, 'This user no longer exists');
    const user = toUser(row);
    await this.deps.cache.remember(principal.environment, principal.tenantId, user, cached.ticket);
    return user;
  }

  async updateMe(principal: UserPrincipal, changes: ProfileChanges, context: RequestContext): Promise<User> {
    const sensitive = changes.email !== undefined || changes.password !== undefined;
    if (sensitive && changes.current_password === undefined) {
      fail(Errors.validationFailed, 'Changing the email or password needs the current password', {
        errors: [{ field: 'current_password', message: 'is required to change the email or password' }],
      });
    }
    const current = await withTenant(this.db(principal.environment), principal.tenantId, (trx) => usersRepo.findUser(trx, principal.tenantId, principal.userId));
    if (!current) throw new AppError(Errors.unauthorized, 'This user no longer exists');
    if (sensitive) {
      // The same throttle as logins: a stolen access token must not become a password oracle.
      const account = `${principal.environment}:${principal.tenantId}:${current.email.toLowerCase()}`;
      await this.deps.throttle.check(account, context.ip);
      if (!(await this.deps.passwords.verify(current.password_hash, changes.current_password as string))) {
        await this.deps.throttle.failed(account, context.ip);
        fail(Errors.invalidCredentials, 'The current password is wrong');
      }
    }
    const passwordHash = changes.password === undefined ? undefined : await this.deps.passwords.hash(changes.password);
    let ended: string[] = [];
    const user = await this.write(principal.environment, principal.tenantId, principal.userId, async (trx) => {
      const row = await usersRepo.updateUser(trx, principal.tenantId, principal.userId, {
        name: changes.name?.trim(),
        email: changes.email === undefined ? undefined : normaliseEmail(changes.email),
        password_hash: passwordHash,
      });
      if (!row) throw new AppError(Errors.unauthorized, 'This user no longer exists');
      if (passwordHash !== undefined) {
        // Other sessions end; the one making the change goes on.
        const revoked = await sessionsRepo.revokeUserTokens(trx, principal.tenantId, row.id, principal.sessionId);
        ended = revoked.sessions;
        await this.deps.audit.record(trx, principal.tenantId, { type: 'password_changed', actor: actorFor(principal), ip: context.ip, detail: { revoked_sessions: revoked.tokens } });
      }
      if (changes.email !== undefined && changes.email !== current.email) {
        await this.deps.audit.record(trx, principal.tenantId, {
          type: 'user_updated',
          actor: actorFor(principal),
          ip: context.ip,
          detail: { user_id: row.id, fields: ['email'], old_email: current.email, new_email: row.email },
        });
      }
      return toUser(row);
    });
    // After the commit: the ended sessions' access tokens are refused everywhere from now on.
    await this.deps.revocations.sessionsEnded(ended);
    return user;
  }

  /** Runs a write and turns a taken email into 409. */
  private async write<T>(environment: Environment, tenantId: string, userId: string, work: (trx: Tx) => Promise<T>): Promise<T> {
    try {
      return await withTenant(this.db(environment), tenantId, work);
    } catch (error) {
      if (usersRepo.isUniqueViolation(error)) fail(Errors.emailTaken, 'An account with this email already exists');
      throw error;
    } finally {
      // Whether it committed or not, the next read of this user goes to the database.
      if (userId) await this.deps.cache.forget(environment, tenantId, userId);
    }
  }

  /** Admin users must still be admins now; keys were already checked by the gateway (kind and scope). */
  private async assertAdmin(trx: Tx, principal: TenantPrincipal): Promise<void> {
    if (principal.kind !== 'user') return;
    const self = principal.role === 'admin' ? await usersRepo.findUser(trx, principal.tenantId, principal.userId) : null;
    if (self?.role !== 'admin') fail(Errors.forbidden, 'Only admins may manage users');
  }

  async list(principal: TenantPrincipal, limit: number, before?: string): Promise<{ data: User[]; next_cursor: string | null }> {
    return withTenant(this.db(principal.environment), principal.tenantId, async (trx) => {
      await this.assertAdmin(trx, principal);
      const rows = await usersRepo.listUsers(trx, principal.tenantId, limit + 1, before);
      return pageOf(rows, limit, toUser);
    });
  }

  async create(principal: TenantPrincipal, input: { email: string; password: string; name: string; role?: Role }, context: RequestContext): Promise<User> {
    assertKeyMayTouch(principal, input.role);
    if (principal.kind === 'user') {
      // Fail fast before the costly hash; checked again in the transaction.
      await withTenant(this.db(principal.environment), principal.tenantId, (trx) => this.assertAdmin(trx, principal));
    }
    const passwordHash = await this.deps.passwords.hash(input.password);
    return this.write(principal.environment, principal.tenantId, '', async (trx) => {
      await this.assertAdmin(trx, principal);
      const row = await usersRepo.insertUser(trx, {
        id: newId('usr'),
        tenant_id: principal.tenantId,
        email: normaliseEmail(input.email),
        name: input.name.trim(),
        role: input.role ?? 'user',
        password_hash: passwordHash,
      });
      await this.deps.audit.record(trx, principal.tenantId, {
        type: 'user_created',
        actor: actorFor(principal),
        ip: context.ip,
        detail: { user_id: row.id, email: row.email, role: row.role, via: 'admin' },
      });
      return toUser(row);
    });
  }

  async get(principal: TenantPrincipal, id: string): Promise<User> {
    return withTenant(this.db(principal.environment), principal.tenantId, async (trx) => {
      if (principal.kind === 'user' && principal.userId !== id) {
        // A plain user asking for someone else learns nothing, not even that the id exists.
        const self = principal.role === 'admin' ? await usersRepo.findUser(trx, principal.tenantId, principal.userId) : null;
        if (self?.role !== 'admin') throw notFound();
      }
      const row = await usersRepo.findUser(trx, principal.tenantId, id);
      if (!row) throw notFound();
      return toUser(row);
    });
  }

  private async assertManages(trx: Tx, principal: TenantPrincipal, id: string): Promise<void> {
    if (principal.kind !== 'user') return;
    const self = principal.role === 'admin' ? await usersRepo.findUser(trx, principal.tenantId, principal.userId) : null;
    if (self?.role !== 'admin') {
      if (principal.userId === id) fail(Errors.forbidden, 'Use /v1/users/me to change your own account');
      throw notFound();
    }
  }

  async update(principal: TenantPrincipal, id: string, changes: AdminChanges, context: RequestContext): Promise<User> {
    assertKeyMayTouch(principal, changes.role);
    if (principal.kind === 'user') await withTenant(this.db(principal.environment), principal.tenantId, (trx) => this.assertManages(trx, principal, id));
    const passwordHash = changes.password === undefined ? undefined : await this.deps.passwords.hash(changes.password);
    let ended: string[] = [];
    const user = await this.write(principal.environment, principal.tenantId, id, async (trx) => {
      await this.assertManages(trx, principal, id);
      const before = await usersRepo.lockUser(trx, principal.tenantId, id);
      if (!before) throw notFound();
      assertKeyMayTouch(principal, before.role);
      const row = await usersRepo.updateUser(trx, principal.tenantId, id, {
        name: changes.name?.trim(),
        email: changes.email === undefined ? undefined : normaliseEmail(changes.email),
        role: changes.role,
        password_hash: passwordHash,
      });
      if (!row) throw notFound();
      if (passwordHash !== undefined) ended = (await sessionsRepo.revokeUserTokens(trx, principal.tenantId, id)).sessions;
      await this.deps.audit.record(trx, principal.tenantId, {
        type: passwordHash !== undefined ? 'password_changed' : 'user_updated',
        actor: actorFor(principal),
        ip: context.ip,
        detail: {
          user_id: id,
          fields: Object.keys(changes).filter((field) => changes[field as keyof AdminChanges] !== undefined),
          ...(changes.role !== undefined && changes.role !== before.role ? { old_role: before.role, new_role: changes.role } : {}),
        },
      });
      return toUser(row);
    });
    await this.deps.revocations.sessionsEnded(ended);
    return user;
  }

  async delete(principal: TenantPrincipal, id: string, context: RequestContext): Promise<void> {
    await this.write(principal.environment, principal.tenantId, id, async (trx) => {
      await this.assertManages(trx, principal, id);
      const target = await usersRepo.lockUser(trx, principal.tenantId, id);
      if (!target) throw notFound();
      assertKeyMayTouch(principal, target.role);
      // Sessions and reset tokens go with the user (on delete cascade).
      const row = await usersRepo.deleteUser(trx, principal.tenantId, id);
      if (!row) throw notFound();
      await this.deps.audit.record(trx, principal.tenantId, { type: 'user_deleted', actor: actorFor(principal), ip: context.ip, detail: { user_id: id, email: row.email } });
    });
    // After the commit: every process refuses the user's access tokens from now on.
    await this.deps.revocations.userDeleted(id);
  }
}
