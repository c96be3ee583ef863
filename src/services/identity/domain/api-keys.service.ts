import type { Databases, Tx } from '../../../adapters/db/pg.ts';
import { newId } from '../../../core/ids.ts';
import type { Environment, Principal } from '../../../core/principal.ts';
import * as keysRepo from '../repo/api-keys.repo.ts';
import { displayPrefix, generateKey, hashKey, type KeyKind, parseKey } from './api-keys.ts';

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

/** How long a verified key is trusted without asking the database again. Revocation through this process drops it at once. */
const CACHE_MS = 30_000;
const CACHE_MAX = 10_000;

export class ApiKeysService {
  private readonly cache = new Map<string, { principal: Principal; until: number }>();

  constructor(private readonly databases: Databases) {}

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
    if (cached && cached.until > Date.now()) return cached.principal;
    const row = await keysRepo.findActiveKeyByHash(this.databases.environments[parsed.environment], hash);
    if (!row) return null;
    const principal: Principal =
      row.kind === 'account'
        ? { kind: 'account_key', keyId: row.id, tenantId: row.tenant_id, environment: parsed.environment }
        : { kind: 'application_key', keyId: row.id, tenantId: row.tenant_id, environment: parsed.environment, scopes: row.scopes };
    if (this.cache.size >= CACHE_MAX) this.cache.clear();
    this.cache.set(cacheKey, { principal, until: Date.now() + CACHE_MS });
    return principal;
  }

  /** Drops a revoked key from the cache so it fails from the next request on. */
  forget(hash: Buffer): void {
    this.cache.delete(hash.toString('base64'));
  }
}
