/**
 * Who is calling, as the gateway established it. Services receive a verified principal
 * and never see raw credentials.
 */
export type Environment = 'live' | 'test';

/** Every environment, in the order work goes through them. */
export const ENVIRONMENTS: readonly Environment[] = ['live', 'test'];

export type Principal =
  | { kind: 'operator' }
  | { kind: 'account_key'; keyId: string; tenantId: string; environment: Environment }
  | { kind: 'application_key'; keyId: string; tenantId: string; environment: Environment; scopes: string[] }
  | { kind: 'user'; userId: string; tenantId: string; environment: Environment; role: 'user' | 'admin' };

export type TenantPrincipal = Exclude<Principal, { kind: 'operator' }>;

export function isEnvironment(value: string): value is Environment {
  return value === 'live' || value === 'test';
}

/** Account keys and admin users see every resource of their tenant and environment. */
export function isTenantAdmin(principal: Principal): boolean {
  return principal.kind === 'account_key' || (principal.kind === 'user' && principal.role === 'admin');
}

/** The `actor` of an event or audit entry. */
export function actorOf(principal: Principal): { type: 'user' | 'key' | 'operator'; id: string } {
  switch (principal.kind) {
    case 'user':
      return { type: 'user', id: principal.userId };
    case 'account_key':
    case 'application_key':
      return { type: 'key', id: principal.keyId };
    case 'operator':
      return { type: 'operator', id: 'operator' };
  }
}
