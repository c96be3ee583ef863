import type { Databases, Tx } from '../../../adapters/db/pg.ts';
import { withTenant } from '../../../adapters/db/pg.ts';
import { AppError, Errors } from '../../../core/errors.ts';
import { newId } from '../../../core/ids.ts';
import { pageOf } from '../../../core/pagination.ts';
import type { Environment, Principal } from '../../../core/principal.ts';
import * as keysRepo from '../repo/api-keys.repo.ts';
import { displayPrefix, generateKey, hashKey, type KeyKind, parseKey } from './api-keys.ts';
import { type AuditLog, actorFor, type RequestContext } from './audit.ts';
import type { TokenRevocations } from './revocations.ts';

/** A key as lists show it: never the secret, only its display prefix. */
export interface KeyInfo {
  id: string;
  kind: KeyKind;
  environment: Environment;
  name: string;
  scopes: string[];
  prefix: string;
  created_at: string;
}

/** What a verified key stands for. */
type KeyPrincipal = Extract<Principal, { kind: 'account_key' | 'application_key' }>;

/** Keys are managed with an account key only. */
export type AccountPrincipal = Extract<Principal, { kind: 'account_key' }>;

export interface CreatedKey {
  id: string;
  key: string;
  kind: KeyKind;
  environment: Environment;
  name: string;
  scopes: string[];
  prefix: string;
  created_at: string;
}

/**
 * How long a verified key is trusted without asking the database again. A revocation drops it
 * from this process's cache at once, and every other process learns it from the revocation
 * list on its next use of the key.
 */
const CACHE_MS = 30_000;
const CACHE_MAX = 10_000;

export class ApiKeysService {
  private readonly cache = new Map<string, { principal: KeyPrincipal; until: number }>();

  constructor(
    private readonly databases: Databases,
    /** Absent only where no request is being served (tenant creation by the operator). */
    private readonly audit?: AuditLog,
    /** How a revocation reaches the key caches of the other processes; absent where no key is verified. */
    private readonly revocations?: Pick<TokenRevocations, 'keyRevoked' | 'isKeyRevoked'>,
  ) {}

  /** POST /v1/keys: a new key of the caller's tenant and environment. */
  async create(principal: AccountPrincipal, input: { kind: KeyKind; name: string; scopes?: string[] }, context: RequestContext): Promise<CreatedKey> {
    // Scopes only limit application keys; an account key has every power, so it carries none.
    const scopes = input.kind === 'application' ? [...new Set(input.scopes ?? [])] : [];
    return withTenant(this.databases.environments[principal.environment], principal.tenantId, async (trx) => {
      const created = await this.createIn(trx, { tenantId: principal.tenantId, environment: principal.environment, kind: input.kind, name: input.name.trim(), scopes });
      await this.audit?.record(trx, principal.tenantId, {
        type: 'key_created',
        actor: actorFor(principal),
        ip: context.ip,
        detail: { key_id: created.id, kind: created.kind, name: created.name, scopes: created.scopes, prefix: created.prefix },
      });
      return created;
    });
  }

  async list(principal: AccountPrincipal, limit: number, before?: string): Promise<{ data: KeyInfo[]; next_cursor: string | null }> {
    const rows = await withTenant(this.databases.environments[principal.environment], principal.tenantId, (trx) =>
      keysRepo.listApiKeys(trx, principal.tenantId, limit + 1, before),
    );
    return pageOf(rows, limit, (row) => ({
      id: row.id,
      kind: row.kind,
      environment: principal.environment,
      name: row.name,
      scopes: row.scopes,
      prefix: row.prefix,
      created_at: row.created_at.toISOString(),
    }));
  }

  /** Revokes a key of the caller's tenant and environment; it fails with 401 from the next request on. */
  async revoke(principal: AccountPrincipal, id: string, context: RequestContext): Promise<void> {
    const hash = await withTenant(this.databases.environments[principal.environment], principal.tenantId, async (trx) => {
      const revoked = await keysRepo.revokeApiKey(trx, principal.tenantId, id);
      if (revoked) await this.audit?.record(trx, principal.tenantId, { type: 'key_revoked', actor: actorFor(principal), ip: context.ip, detail: { key_id: id } });
      return revoked;
    });
    if (!hash) throw new AppError(Errors.notFound, 'No such key');
    this.forget(hash);
    await this.revocations?.keyRevoked(id, CACHE_MS);
  }

  /** Makes a key inside a tenant-bound transaction; the secret is returned here and never again. */
  async createIn(trx: Tx, input: { tenantId: string; environment: Environment; kind: KeyKind; name: string; scopes: string[] }): Promise<CreatedKey> {
    const key = generateKey(input.kind, input.environment);
    const row = await keysRepo.insertApiKey(trx, {
      id: newId('key'),
      tenant_id: input.tenantId,
      kind: input.kind,
      name: input.name,
      scopes: input.scopes,
      prefix: displayPrefix(key),
      hash: hashKey(key),
    });
    return { id: row.id, key, kind: row.kind, environment: input.environment, name: row.name, scopes: row.scopes, prefix: row.prefix, created_at: row.created_at.toISOString() };
  }

  /** The principal a key stands for, or null. A key of the wrong shape costs no database lookup. */
  async verify(key: string): Promise<Principal | null> {
    const parsed = parseKey(key);
    if (!parsed) return null;
    const hash = hashKey(key);
    const cacheKey = hash.toString('base64');
    const cached = this.cache.get(cacheKey);
    if (cached && cached.until > Date.now()) {
      const revoked = this.revocations ? await this.revocations.isKeyRevoked(cached.principal.keyId) : false;
      if (revoked === false) return cached.principal;
      // Revoked elsewhere, or the list cannot tell: the database decides.
      this.cache.delete(cacheKey);
    }
    const row = await keysRepo.findActiveKeyByHash(this.databases.environments[parsed.environment], hash);
    if (!row) return null;
    const principal: KeyPrincipal =
      row.kind === 'account'
        ? { kind: 'account_key', keyId: row.id, tenantId: row.tenant_id, environment: parsed.environment }
        : { kind: 'application_key', keyId: row.id, tenantId: row.tenant_id, environment: parsed.environment, scopes: row.scopes };
    if (this.cache.size >= CACHE_MAX) this.cache.clear();
    this.cache.set(cacheKey, { principal, until: Date.now() + CACHE_MS });
    return principal;
  }

  /** Drops a revoked key from this process's cache so it fails here from the next request on. */
  forget(hash: Buffer): void {
    this.cache.delete(hash.toString('base64'));
  }
}
