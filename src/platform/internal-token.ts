import { createHmac, hkdfSync } from 'node:crypto';
import type { Principal } from '../core/principal.ts';
import { sameText } from '../core/same-text.ts';

/**
 * The gateway's word to a service (distributed mode): "this request, with this id, comes
 * from me, on behalf of this verified principal". Sent as the `X-Bantu-Internal` header:
 * `v1.<payload>.<signature>`, base64url, HMAC-SHA256 under a key derived from
 * BANTU_SECRET_KEY. A service trusts nothing else, so its port reached directly grants nothing.
 *
 * The token is bound to the method and URL it was made for and lives seconds, so one seen
 * in a log cannot be replayed against another route or later.
 */
export const INTERNAL_HEADER = 'x-bantu-internal';
export const INTERNAL_TOKEN_SECONDS = 30;

export interface InternalClaims {
  principal: Principal | null;
  requestId: string;
  method: string;
  url: string;
  /** `service`: made by another service (ServiceClient), the only callers of internal routes; the gateway never sets it. */
  audience?: 'service';
}

interface Payload {
  p: Principal | null;
  rid: string;
  m: string;
  u: string;
  aud?: 'service';
  /** Expiry, unix milliseconds. */
  exp: number;
}

export class InternalTokens {
  private readonly key: Buffer;

  constructor(
    secretKey: string,
    private readonly now: () => number = Date.now,
  ) {
    this.key = Buffer.from(hkdfSync('sha256', secretKey, 'bantu', 'bantu internal token v1', 32));
  }

  /** A short fingerprint of the key: processes of one installation must show the same one. */
  keyId(): string {
    return createHmac('sha256', this.key).update('key id').digest('base64url').slice(0, 16);
  }

  sign(claims: InternalClaims): string {
    const payload: Payload = {
      p: claims.principal,
      rid: claims.requestId,
      m: claims.method,
      u: claims.url,
      ...(claims.audience ? { aud: claims.audience } : {}),
      exp: this.now() + INTERNAL_TOKEN_SECONDS * 1000,
    };
    const body = Buffer.from(JSON.stringify(payload)).toString('base64url');
    return `v1.${body}.${this.mac(body)}`;
  }

  /** The claims of a valid token for this method and URL; null for anything else. */
  verify(token: string | undefined, method: string, url: string): InternalClaims | null {
    if (!token) return null;
    const [version, body, signature, extra] = token.split('.');
    if (version !== 'v1' || !body || !signature || extra !== undefined) return null;
    if (!sameText(signature, this.mac(body))) return null;
    let payload: Payload;
    try {
      payload = JSON.parse(Buffer.from(body, 'base64url').toString('utf8'));
    } catch {
      return null;
    }
    const now = this.now();
    // Not expired, and not minted for far in the future either (a clock skew of a few seconds is fine).
    if (!(payload.exp > now && payload.exp <= now + (INTERNAL_TOKEN_SECONDS + 5) * 1000)) return null;
    if (payload.m !== method || payload.u !== url) return null;
    return { principal: payload.p, requestId: payload.rid, method: payload.m, url: payload.u, ...(payload.aud === 'service' ? { audience: 'service' as const } : {}) };
  }

  /**
   * Signs what an instance announces in the registry, so that only processes holding the
   * installation's key can pose as one of its services (anyone may publish on a NATS).
   */
  signAnnouncement(text: string): string {
    return createHmac('sha256', this.key).update('announcement\0').update(text).digest('base64url');
  }

  verifyAnnouncement(text: string, signature: string): boolean {
    return sameText(signature, this.signAnnouncement(text));
  }

  private mac(body: string): string {
    return createHmac('sha256', this.key).update(body).digest('base64url');
  }
}
