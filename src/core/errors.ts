/**
 * The error registry: every error a client can see is defined here once, with its
 * stable `code`, HTTP status and default title. Domain code throws `AppError`s made
 * from these definitions; the gateway renders them as RFC 9457 problem+json.
 * Anything thrown that is not an AppError becomes a bare 500 whose cause is logged.
 */
export interface ErrorDefinition {
  readonly code: string;
  readonly status: number;
  readonly title: string;
}

export interface FieldError {
  field: string;
  message: string;
}

const registry = new Map<string, ErrorDefinition>();

export function defineError(code: string, status: number, title: string): ErrorDefinition {
  if (registry.has(code)) throw new Error(`error code defined twice: ${code}`);
  const definition = Object.freeze({ code, status, title });
  registry.set(code, definition);
  return definition;
}

/** The definition behind a stable code (a problem another service answered), if it is one of ours. */
export function errorDefinition(code: string): ErrorDefinition | undefined {
  return registry.get(code);
}

export function registeredErrors(): ErrorDefinition[] {
  return [...registry.values()];
}

export class AppError extends Error {
  readonly definition: ErrorDefinition;
  readonly detail: string;
  readonly errors?: FieldError[];
  /** Extra response headers, e.g. Retry-After or WWW-Authenticate. */
  readonly headers?: Record<string, string>;

  constructor(
    definition: ErrorDefinition,
    detail?: string,
    extra: { errors?: FieldError[]; headers?: Record<string, string>; cause?: unknown } = {},
  ) {
    super(detail ?? definition.title, { cause: extra.cause });
    this.name = 'AppError';
    this.definition = definition;
    this.detail = detail ?? definition.title;
    this.errors = extra.errors;
    this.headers = extra.headers;
  }

  get code(): string {
    return this.definition.code;
  }

  get status(): number {
    return this.definition.status;
  }
}

export function fail(
  definition: ErrorDefinition,
  detail?: string,
  extra?: ConstructorParameters<typeof AppError>[2],
): never {
  throw new AppError(definition, detail, extra);
}

// The contract's codes (API.md section 2), plus the few HTTP-level ones any server needs.
export const Errors = {
  unauthorized: defineError('unauthorized', 401, 'Missing or invalid credentials'),
  forbidden: defineError('forbidden', 403, 'These credentials may not do this'),
  notFound: defineError('not_found', 404, 'Not found'),
  methodNotAllowed: defineError('method_not_allowed', 405, 'Method not allowed'),
  validationFailed: defineError('validation_failed', 422, 'The request is not valid'),
  badRequest: defineError('bad_request', 400, 'Bad request'),
  malformedBody: defineError('malformed_body', 400, 'The request body is malformed'),
  emailTaken: defineError('email_taken', 409, 'This email is already registered'),
  invalidCredentials: defineError('invalid_credentials', 401, 'Wrong email or password'),
  invalidToken: defineError('invalid_token', 400, 'The token is invalid, used or expired'),
  fileExists: defineError('file_exists', 409, 'A file with this name already exists here'),
  versionConflict: defineError('version_conflict', 412, 'The file has changed since you read it'),
  rangeNotSatisfiable: defineError('range_not_satisfiable', 416, 'The requested range is not satisfiable'),
  payloadTooLarge: defineError('payload_too_large', 413, 'The request body is too large'),
  quotaExceeded: defineError('quota_exceeded', 413, 'The storage quota of this tenant is exhausted'),
  rateLimited: defineError('rate_limited', 429, 'Too many requests'),
  httpsRequired: defineError('https_required', 403, 'This server only answers over HTTPS'),
  unsupportedMediaType: defineError('unsupported_media_type', 415, 'Unsupported content type'),
  idempotencyConflict: defineError(
    'idempotency_conflict',
    409,
    'This Idempotency-Key was already used with a different request',
  ),
  conflict: defineError('conflict', 409, 'The request conflicts with the current state'),
  unavailable: defineError('service_unavailable', 503, 'The service is not ready'),
  upstreamFailed: defineError('upstream_failed', 502, 'A service failed while answering'),
  upstreamTimeout: defineError('upstream_timeout', 504, 'A service did not answer in time'),
  /** Between services only: a restore sent without the bytes its files store lacks (send them). */
  contentMissing: defineError('content_missing', 409, 'The bytes of this version are not in the files store'),
  internal: defineError('internal_error', 500, 'Internal server error'),
} as const;
