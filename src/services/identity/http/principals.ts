import type { FastifyRequest } from 'fastify';
import { AppError, Errors } from '../../../core/errors.ts';
import { tenantPrincipalOf } from '../../../gateway/auth.ts';
import type { AccountPrincipal } from '../domain/api-keys.service.ts';
import type { KeyPrincipal, UserPrincipal } from '../domain/users.ts';

/**
 * The caller of an identity route, narrowed to the kinds its `auth` rule admits. The gateway
 * has already refused every other kind with 403; these checks only give the handler its type.
 */
const wrongKind = () => new AppError(Errors.forbidden, 'These credentials may not call this route');

/** Routes open to keys only (`auth: ['application_key', 'account_key']`). */
export function keyPrincipalOf(request: FastifyRequest): KeyPrincipal {
  const principal = tenantPrincipalOf(request);
  if (principal.kind === 'user') throw wrongKind();
  return principal;
}

/** Routes of user tokens only (`auth: ['user']`); the principal keeps its login session when it has one. */
export function userPrincipalOf(request: FastifyRequest): UserPrincipal {
  const principal = tenantPrincipalOf(request);
  if (principal.kind !== 'user') throw wrongKind();
  return principal;
}

/** Routes of account keys only (`auth: ['account_key']`). */
export function accountPrincipalOf(request: FastifyRequest): AccountPrincipal {
  const principal = tenantPrincipalOf(request);
  if (principal.kind !== 'account_key') throw wrongKind();
  return principal;
}
