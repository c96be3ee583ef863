import path from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Logger } from 'pino';
import type { Databases } from '../../adapters/db/pg.ts';
import type { CounterStore, Mailer, ReadThroughCache, RevocationList } from '../../core/ports.ts';
import { actorOf } from '../../core/principal.ts';
import { SecretBox } from '../../core/secret-box.ts';
import type { AdminNoticePort, AuditPort, UserDirectoryPort } from '../../core/service-ports.ts';
import type { CredentialVerifier } from '../../gateway/auth.ts';
import type { Route } from '../../gateway/routes.ts';
import type { ServiceMigrations, ServiceModule } from '../../platform/module.ts';
import { AdminNotices } from './domain/admin-notices.ts';
import { ApiKeysService } from './domain/api-keys.service.ts';
import { AuditLog } from './domain/audit.ts';
import { AuthService } from './domain/auth.service.ts';
import { type DEFAULT_LOGIN_LIMITS, LoginThrottle } from './domain/login-throttle.ts';
import { PasswordHasher } from './domain/passwords.ts';
import { TokenRevocations } from './domain/revocations.ts';
import { TenantsService } from './domain/tenants.service.ts';
import { ACCESS_TOKEN_SECONDS, TokenService } from './domain/tokens.service.ts';
import { UserCache } from './domain/user-cache.ts';
import { UsersService } from './domain/users.service.ts';
import type { UserPrincipal } from './domain/users.ts';
import { auditInternalRoutes } from './http/audit.internal-routes.ts';
import { authRoutes } from './http/auth.routes.ts';
import { jwksRoutes, keysRoutes, signingKeysRoutes } from './http/keys.routes.ts';
import { tenantsRoutes } from './http/tenants.routes.ts';
import { usersRoutes } from './http/users.routes.ts';

const here = path.dirname(fileURLToPath(import.meta.url));

/** Identity: tenants, API keys, users, sessions and tokens, password recovery, the audit trail. */
export const identityMigrations: ServiceMigrations = {
  control: [{ service: 'identity', folder: path.join(here, 'migrations', 'control') }],
  environment: [{ service: 'identity', folder: path.join(here, 'migrations', 'environment') }],
};

export interface IdentityDeps {
  databases: Databases;
  /** Seals the JWT signing keys at rest (BANTU_SECRET_KEY or secrets/secret-key). */
  secretKey: string;
  mailer: Mailer;
  /** Counters for login throttling; in-memory in one process, shared (Redis) when distributed. */
  counters: CounterStore;
  /** Revoked users and sessions; in memory in one process, shared (Redis) when distributed. */
  revocations: RevocationList;
  /** The cache of users in front of the database; likewise. */
  cache: ReadThroughCache;
  /** Public base URL: the tokens' `iss` and the base of links in mails. Known once the gateway listens. */
  publicUrl: () => string;
  logger: Logger;
  loginLimits?: typeof DEFAULT_LOGIN_LIMITS;
}

export interface IdentityService extends ServiceModule {
  tenants: TenantsService;
  apiKeys: ApiKeysService;
  tokens: TokenService;
  users: UsersService;
  auth: AuthService;
  audit: AuditLog;
  /** Audit entries and mails to the tenant's admins, for other services (webhooks). */
  notices: AdminNoticePort;
  verifiers: CredentialVerifier[];
  /** The route manifests: under /v1, and the JWKS at the root. */
  routes: Route[];
  /** Reached by other services over HTTP when distributed (the exports' audit entries); never through the gateway. */
  internalRoutes: Route[];
  /** What other services learn of users, and write in the audit trail, in-process. */
  userDirectory: UserDirectoryPort;
  auditPort: AuditPort;
  /** Loads (or on first start makes) the signing keys; before the gateway serves. */
  start(): Promise<void>;
  /** Stops the background work (the key sets' periodic re-read, revocations waiting for Redis). */
  close(): void;
}

export function createIdentityService(deps: IdentityDeps): IdentityService {
  const audit = new AuditLog(deps.databases);
  const tokens = new TokenService({ databases: deps.databases, box: new SecretBox(deps.secretKey), issuer: deps.publicUrl });
  const passwords = new PasswordHasher();
  const throttle = new LoginThrottle(deps.counters, deps.loginLimits);
  const logger = deps.logger.child({ component: 'identity' });
  // A token lifetime and its clock skew: past that, every token a revocation names has expired.
  const revocations = new TokenRevocations({ list: deps.revocations, databases: deps.databases, lifetimeMs: (ACCESS_TOKEN_SECONDS + 60) * 1000, logger });
  const apiKeys = new ApiKeysService(deps.databases, audit, revocations);
  const tenants = new TenantsService(deps.databases, apiKeys);
  const cache = new UserCache(deps.cache, logger);
  const auth = new AuthService({
    databases: deps.databases,
    tokens,
    passwords,
    throttle,
    counters: deps.counters,
    audit,
    cache,
    revocations,
    mailer: deps.mailer,
    linkBase: deps.publicUrl,
    logger,
  });
  const users = new UsersService({ databases: deps.databases, passwords, throttle, audit, revocations, cache });

  const userTokens: CredentialVerifier = {
    async verify(credential) {
      // Keys and the operator token never look like a JWT: skip them without parsing.
      if (!credential.startsWith('eyJ')) return null;
      const claims = await tokens.verify(credential);
      // When neither Redis nor the database can tell, this rejects and the request fails (5xx)
      // rather than answer 401: a client retries a 5xx, but drops its session on a 401.
      if (!claims || (await revocations.isRevoked(claims))) return null;
      const principal: UserPrincipal = {
        kind: 'user',
        userId: claims.userId,
        tenantId: claims.tenantId,
        environment: claims.environment,
        role: claims.role,
        sessionId: claims.sessionId,
      };
      return principal;
    },
  };

  return {
    name: 'identity',
    consumers: [],
    tenants,
    apiKeys,
    tokens,
    users,
    auth,
    audit,
    notices: new AdminNotices(deps.databases, audit, deps.mailer),
    verifiers: [{ verify: (credential) => apiKeys.verify(credential) }, userTokens],
    userDirectory: { emailOf: async (principal) => (await users.me(principal)).email },
    auditPort: {
      record: (principal, entry) => audit.recordAlone(principal.environment, principal.tenantId, { type: entry.type, actor: actorOf(principal), ip: entry.ip, detail: entry.detail }),
    },
    internalRoutes: auditInternalRoutes(audit),
    routes: [
      ...jwksRoutes(tokens),
      ...tenantsRoutes(tenants),
      ...keysRoutes(apiKeys),
      ...signingKeysRoutes(tokens),
      ...authRoutes(auth),
      ...usersRoutes(users, audit),
    ],
    start: () => tokens.start(),
    close: () => {
      tokens.stop();
      revocations.close();
    },
  };
}
