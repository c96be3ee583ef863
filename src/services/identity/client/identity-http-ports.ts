import { Readable } from 'node:stream';
import type { TenantPrincipal } from '../../../core/principal.ts';
import type { AuditPort, UserDirectoryPort } from '../../../core/service-ports.ts';
import type { ServiceClient } from '../../../platform/service-client.ts';

/** A user's address over HTTP (distributed mode): `GET /v1/users/me` on behalf of that user. */
export class HttpUserDirectory implements UserDirectoryPort {
  constructor(private readonly client: ServiceClient) {}

  async emailOf(principal: Extract<TenantPrincipal, { kind: 'user' }>): Promise<string> {
    const user = await this.client.json<{ email: string }>('identity', { method: 'GET', path: '/v1/users/me', principal });
    return user.email;
  }
}

/** Audit entries over HTTP (distributed mode): identity's internal `POST /internal/audit`. */
export class HttpAuditPort implements AuditPort {
  constructor(private readonly client: ServiceClient) {}

  async record(principal: TenantPrincipal, entry: Parameters<AuditPort['record']>[1]): Promise<void> {
    const body = JSON.stringify(entry);
    await this.client.json('identity', {
      method: 'POST',
      path: '/internal/audit',
      principal,
      headers: { 'content-type': 'application/json', 'content-length': String(Buffer.byteLength(body)) },
      body: Readable.from([Buffer.from(body)]),
    });
  }
}
