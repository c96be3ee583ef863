import { createHmac, hkdfSync } from 'node:crypto';
import type { Environment } from '../../../core/principal.ts';
import { sameText } from '../../../core/same-text.ts';

/**
 * The signed download link's token: `<environment>.<expires, unix seconds>.<HMAC-SHA256>`, the
 * MAC over the export id, environment and expiry, keyed with an HKDF of the installation's
 * secret key. Bound to one export: another export's token, a forged or an expired one verifies
 * as null (the route answers 404 for all of them alike).
 */
export class DownloadTokens {
  private readonly key: Buffer;

  constructor(secretKey: string) {
    this.key = Buffer.from(hkdfSync('sha256', secretKey, 'bantu', 'bantu export download token v1', 32));
  }

  sign(exportId: string, environment: Environment, expiresAt: Date): string {
    const expires = Math.floor(expiresAt.getTime() / 1000);
    return `${environment}.${expires}.${this.mac(exportId, environment, expires)}`;
  }

  /** The environment the token was issued in, when it is valid for this export now; else null. */
  verify(exportId: string, token: string, now = Date.now()): Environment | null {
    const match = /^(live|test)\.(\d{1,12})\.([A-Za-z0-9_-]{43})$/.exec(token);
    if (!match) return null;
    const environment = match[1] as Environment;
    const expires = Number(match[2]);
    if (!sameText(match[3] as string, this.mac(exportId, environment, expires))) return null;
    return expires * 1000 > now ? environment : null;
  }

  /** The environment a token names, unverified: where to look the export up. */
  static environmentOf(token: string): Environment | null {
    return token.startsWith('live.') ? 'live' : token.startsWith('test.') ? 'test' : null;
  }

  private mac(exportId: string, environment: Environment, expires: number): string {
    return createHmac('sha256', this.key).update(`${exportId}\n${environment}\n${expires}`).digest('base64url');
  }
}
