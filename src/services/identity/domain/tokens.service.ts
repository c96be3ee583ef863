import { createPrivateKey, createPublicKey, generateKeyPairSync, type KeyObject, randomBytes, sign as signEd25519 } from 'node:crypto';
import { decodeJwt, decodeProtectedHeader, type JWK, jwtVerify } from 'jose';
import type { Databases } from '../../../adapters/db/pg.ts';
import { ENVIRONMENTS } from '../../../adapters/db/pg.ts';
import { type Environment, isEnvironment } from '../../../core/principal.ts';
import type { SecretBox } from '../../../core/secret-box.ts';
import * as keysRepo from '../repo/signing-keys.repo.ts';

/**
 * User access tokens: JWTs signed with Ed25519 (EdDSA), 15 minutes, `kid` in the header.
 *
 * Each environment keeps its own signing keys in its own database, and a token is only
 * checked against the key set of the environment it names: a key of `test` can never
 * vouch for a `live` token, even if both sets were published together at the JWKS URL.
 * Private keys are stored sealed (AES-256-GCM) under the instance secret.
 *
 * Rotation makes a new key the signer; the old one keeps verifying for one token lifetime
 * (plus clock skew and one refresh interval), then drops out of the set and of the JWKS.
 */
export const ACCESS_TOKEN_SECONDS = 15 * 60;
export const AUDIENCE = 'bantu';
export const TOKEN_TYPE = 'at+jwt';
const CLOCK_SKEW_SECONDS = 60;
const ALGORITHM = 'EdDSA';
/**
 * An unknown kid reloads the key set (another process may have rotated), at most this often:
 * a token that comes sooner waits for the next reload rather than being refused, and forged
 * key ids cost at most one read per interval.
 */
const RELOAD_MIN_MS = 250;
/**
 * Every process re-reads its key sets this often, in the background: a rotation made by
 * another process reaches it, and a retired key leaves its set and the JWKS once the tokens
 * it signed have expired.
 */
const KEYSET_REFRESH_MS = 60_000;
/**
 * How long a retired key keeps verifying: a token lifetime and the clock skew, plus one
 * refresh interval, because a process that has not yet seen the rotation still signs with it.
 */
const RETIRED_KEY_VERIFIES_MS = (ACCESS_TOKEN_SECONDS + CLOCK_SKEW_SECONDS) * 1000 + KEYSET_REFRESH_MS;
/**
 * Verified tokens are remembered until they expire: a client sends the same token for
 * minutes, and a signature check costs far more than the rest of a small request.
 * Bounded; when full it is emptied (the next requests simply verify again).
 */
const VERIFIED_CACHE_MAX = 10_000;

export interface AccessClaims {
  userId: string;
  tenantId: string;
  environment: Environment;
  role: 'user' | 'admin';
  /** The refresh token family (login session) the token was issued in. */
  sessionId: string;
  issuedAt: number;
}

interface VerificationKey {
  kid: string;
  publicKey: KeyObject;
  jwk: JWK;
}

/** A signing key as the operator sees it (never its private part). */
export interface SigningKeyInfo {
  kid: string;
  environment: Environment;
  algorithm: string;
  status: 'active' | 'retired';
  created_at: string;
  retired_at: string | null;
  /** Retired keys: when the last token they signed expires and they leave the JWKS. */
  verifies_until: string | null;
}

interface KeySet {
  /** `header` is the encoded JWS header of every token this key signs, made once. */
  signer: { kid: string; privateKey: KeyObject; header: string };
  verification: Map<string, VerificationKey>;
  loadedAt: number;
}

function base64url(value: unknown): string {
  return Buffer.from(JSON.stringify(value)).toString('base64url');
}

const purposeOf = (environment: Environment, kid: string) => `signing-key:${environment}:${kid}`;

export class TokenService {
  private readonly sets = new Map<Environment, KeySet>();
  private readonly reloading = new Map<Environment, Promise<void>>();
  private readonly scheduledReloads = new Map<Environment, Promise<void>>();
  private refreshTimer: NodeJS.Timeout | undefined;
  private readonly verified = new Map<string, { claims: AccessClaims; expiresAtMs: number; kid: string }>();

  constructor(
    private readonly deps: {
      databases: Databases;
      box: SecretBox;
      /** The `iss` claim: the public base URL, known once the gateway listens. */
      issuer: () => string;
      now?: () => number;
      /** How often the key sets are re-read (default one minute; tests make it short). */
      refreshEveryMs?: number;
    },
  ) {}

  private now(): number {
    return this.deps.now?.() ?? Date.now();
  }

  /** Makes each environment's first key when it has none, then loads the key sets. */
  async start(): Promise<void> {
    for (const environment of ENVIRONMENTS) {
      await this.deps.databases.environments[environment].transaction().execute(async (trx) => {
        await keysRepo.lockSigningKeys(trx);
        if (!(await keysRepo.hasActiveSigningKey(trx))) await keysRepo.insertSigningKey(trx, this.newKey(environment));
      });
      await this.load(environment);
    }
    // A failed re-read (database away) keeps the current set until the next one.
    this.refreshTimer = setInterval(() => {
      for (const environment of ENVIRONMENTS) this.reload(environment).catch(() => undefined);
    }, this.deps.refreshEveryMs ?? KEYSET_REFRESH_MS);
    this.refreshTimer.unref();
  }

  stop(): void {
    clearInterval(this.refreshTimer);
  }

  /**
   * The keys of each environment that still verify tokens: the active one (the signer) and
   * those retired less than one token lifetime ago, read from the database (so this process
   * also sees rotations made elsewhere). Newest first within each environment.
   */
  async listKeys(): Promise<SigningKeyInfo[]> {
    const out: SigningKeyInfo[] = [];
    for (const environment of ENVIRONMENTS) {
      const rows = await keysRepo.listUsableSigningKeys(this.deps.databases.environments[environment], new Date(this.now() - RETIRED_KEY_VERIFIES_MS));
      for (const row of rows) {
        out.push({
          kid: row.kid,
          environment,
          algorithm: row.algorithm,
          status: row.retired_at ? 'retired' : 'active',
          created_at: row.created_at.toISOString(),
          retired_at: row.retired_at?.toISOString() ?? null,
          verifies_until: row.retired_at ? new Date(row.retired_at.getTime() + RETIRED_KEY_VERIFIES_MS).toISOString() : null,
        });
      }
    }
    return out;
  }

  /** Makes a new signing key for the environment; tokens signed by the old one stay valid until they expire. */
  async rotate(environment: Environment): Promise<string> {
    const key = this.newKey(environment);
    await this.deps.databases.environments[environment].transaction().execute(async (trx) => {
      await keysRepo.lockSigningKeys(trx);
      await keysRepo.retireActiveSigningKey(trx);
      await keysRepo.insertSigningKey(trx, key);
    });
    // A background read started before the commit must not land after this one with the old set.
    await this.reloading.get(environment)?.catch(() => undefined);
    await this.load(environment);
    return key.kid;
  }

  private newKey(environment: Environment) {
    const { publicKey, privateKey } = generateKeyPairSync('ed25519');
    const kid = randomBytes(12).toString('base64url');
    const pkcs8 = privateKey.export({ format: 'der', type: 'pkcs8' });
    return {
      kid,
      algorithm: ALGORITHM,
      public_jwk: { ...publicKey.export({ format: 'jwk' }), kid, alg: ALGORITHM, use: 'sig' },
      private_enc: this.deps.box.seal(pkcs8, purposeOf(environment, kid)),
    };
  }

  private async load(environment: Environment): Promise<void> {
    const retiredAfter = new Date(this.now() - RETIRED_KEY_VERIFIES_MS);
    const rows = await keysRepo.listUsableSigningKeys(this.deps.databases.environments[environment], retiredAfter);
    const active = rows.find((row) => row.retired_at === null);
    if (!active) throw new Error(`no active signing key in the ${environment} database`);
    let privateKey: KeyObject;
    try {
      privateKey = createPrivateKey({ key: this.deps.box.open(active.private_enc, purposeOf(environment, active.kid)), format: 'der', type: 'pkcs8' });
    } catch (error) {
      throw new Error(
        `cannot decrypt the ${environment} JWT signing key: the secret key (BANTU_SECRET_KEY or secrets/secret-key) is not the one it was sealed with`,
        { cause: error },
      );
    }
    const verification = new Map<string, VerificationKey>();
    for (const row of rows) {
      const jwk = row.public_jwk as JWK;
      verification.set(row.kid, { kid: row.kid, jwk, publicKey: createPublicKey({ key: jwk as never, format: 'jwk' }) });
    }
    const header = base64url({ alg: ALGORITHM, kid: active.kid, typ: TOKEN_TYPE });
    this.sets.set(environment, { signer: { kid: active.kid, privateKey, header }, verification, loadedAt: this.now() });
  }

  private set(environment: Environment): KeySet {
    const set = this.sets.get(environment);
    if (!set) throw new Error('TokenService.start() has not run');
    return set;
  }

  /**
   * A compact JWS (RFC 7515) signed with Ed25519. Signing is done here, synchronously, in
   * some 50 µs: jose signs through WebCrypto, whose jobs wait in libuv's thread pool behind
   * the argon2 verifications of concurrent logins. Verification stays with jose.
   */
  sign(claims: Omit<AccessClaims, 'issuedAt'>): { token: string; expiresIn: number } {
    const { signer } = this.set(claims.environment);
    const now = Math.floor(this.now() / 1000);
    const payload = base64url({
      tid: claims.tenantId,
      env: claims.environment,
      role: claims.role,
      sid: claims.sessionId,
      iss: this.deps.issuer(),
      aud: AUDIENCE,
      sub: claims.userId,
      iat: now,
      exp: now + ACCESS_TOKEN_SECONDS,
      jti: randomBytes(12).toString('base64url'),
    });
    const signingInput = `${signer.header}.${payload}`;
    const signature = signEd25519(null, Buffer.from(signingInput), signer.privateKey).toString('base64url');
    return { token: `${signingInput}.${signature}`, expiresIn: ACCESS_TOKEN_SECONDS };
  }

  /**
   * The claims of a valid access token, or null. Refuses anything but EdDSA with a kid of
   * the named environment's set, a bad signature, a missing or past `exp`, another
   * issuer or audience, and a token of another type.
   */
  async verify(token: string): Promise<AccessClaims | null> {
    const cached = this.verified.get(token);
    if (cached) {
      // Still checked on every use: expiry, and the key still being in its environment's set.
      if (cached.expiresAtMs + CLOCK_SKEW_SECONDS * 1000 > this.now() && this.sets.get(cached.claims.environment)?.verification.has(cached.kid)) {
        return cached.claims;
      }
      this.verified.delete(token);
      return null;
    }
    let kid: unknown;
    let environment: unknown;
    try {
      const header = decodeProtectedHeader(token);
      if (header.alg !== ALGORITHM || header.typ !== TOKEN_TYPE) return null;
      kid = header.kid;
      environment = decodeJwt(token).env;
    } catch {
      return null;
    }
    if (typeof kid !== 'string' || typeof environment !== 'string' || !isEnvironment(environment)) return null;
    const key = await this.keyFor(environment, kid);
    if (!key) return null;
    try {
      const { payload } = await jwtVerify(token, key, {
        algorithms: [ALGORITHM],
        issuer: this.deps.issuer(),
        audience: AUDIENCE,
        typ: TOKEN_TYPE,
        requiredClaims: ['exp', 'iat', 'sub'],
        clockTolerance: CLOCK_SKEW_SECONDS,
        currentDate: new Date(this.now()),
      });
      const { sub, tid, env, role, sid, iat, exp } = payload;
      if (typeof sub !== 'string' || typeof tid !== 'string' || env !== environment || typeof sid !== 'string' || typeof iat !== 'number') return null;
      if (role !== 'user' && role !== 'admin') return null;
      if (typeof exp !== 'number') return null;
      const claims: AccessClaims = { userId: sub, tenantId: tid, environment, role, sessionId: sid, issuedAt: iat };
      if (this.verified.size >= VERIFIED_CACHE_MAX) this.verified.clear();
      this.verified.set(token, { claims, expiresAtMs: exp * 1000, kid });
      return claims;
    } catch {
      return null;
    }
  }

  private async keyFor(environment: Environment, kid: string): Promise<KeyObject | null> {
    const known = () => this.set(environment).verification.get(kid)?.publicKey ?? null;
    // Another process may have rotated. A read already running may predate that rotation, so
    // an unknown kid always gets a read that starts after it arrived.
    if (!known()) await this.reloading.get(environment)?.catch(() => undefined);
    if (!known()) await this.reloadSoon(environment).catch(() => undefined);
    return known();
  }

  /** A reload now, or when RELOAD_MIN_MS have passed since the last one; concurrent callers share it. */
  private reloadSoon(environment: Environment): Promise<void> {
    const wait = Math.min(RELOAD_MIN_MS, this.set(environment).loadedAt + RELOAD_MIN_MS - this.now());
    if (wait <= 0) return this.reload(environment);
    let scheduled = this.scheduledReloads.get(environment);
    if (!scheduled) {
      scheduled = new Promise<void>((resolve) => setTimeout(resolve, wait).unref())
        .then(() => this.reload(environment))
        .finally(() => this.scheduledReloads.delete(environment));
      this.scheduledReloads.set(environment, scheduled);
    }
    return scheduled;
  }

  /** Re-reads the environment's key set; concurrent callers share one read. */
  private reload(environment: Environment): Promise<void> {
    let reload = this.reloading.get(environment);
    if (!reload) {
      reload = this.load(environment).finally(() => this.reloading.delete(environment));
      this.reloading.set(environment, reload);
    }
    return reload;
  }

  /** The public keys of both environments, for GET /.well-known/jwks.json. */
  jwks(): { keys: JWK[] } {
    const keys: JWK[] = [];
    for (const environment of ENVIRONMENTS) {
      for (const key of this.sets.get(environment)?.verification.values() ?? []) keys.push(key.jwk);
    }
    return { keys };
  }
}
