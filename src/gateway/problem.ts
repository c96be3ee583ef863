import { Type } from '@sinclair/typebox';
import type { FastifyError, FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import { AppError, type ErrorDefinition, Errors, type FieldError } from '../core/errors.ts';

/** The one problem+json schema, registered once (`registerProblemHandlers`) and referenced by every error response. */
export const ProblemSchema = Type.Object(
  {
    type: Type.String({ description: '`urn:bantu:problem:<code>`' }),
    title: Type.String(),
    status: Type.Integer(),
    detail: Type.String(),
    code: Type.String({ description: 'Stable snake_case code, e.g. `not_found`, `validation_failed`, `payload_too_large`' }),
    request_id: Type.String(),
    errors: Type.Optional(Type.Array(Type.Object({ field: Type.String(), message: Type.String() }), { description: 'On validation failures' })),
  },
  { $id: 'Problem', title: 'Problem', description: 'RFC 9457 problem details (application/problem+json)', additionalProperties: true },
);

/** An error response of a route: the shared Problem schema. */
export const ProblemRef = { $ref: 'Problem#', description: 'problem+json' } as const;

/**
 * Renders every error as RFC 9457 problem+json from the one error registry.
 * Unknown errors become a bare 500: their cause goes to the log, never to the client.
 */
export interface Problem {
  type: string;
  title: string;
  status: number;
  detail: string;
  code: string;
  request_id: string;
  errors?: FieldError[];
}

export function problemOf(definition: ErrorDefinition, detail: string, requestId: string, errors?: FieldError[]): Problem {
  return {
    type: `urn:bantu:problem:${definition.code}`,
    title: definition.title,
    status: definition.status,
    detail,
    code: definition.code,
    request_id: requestId,
    ...(errors ? { errors } : {}),
  };
}

export function sendProblem(reply: FastifyReply, error: AppError): FastifyReply {
  if (error.headers) reply.headers(error.headers);
  return reply
    .code(error.status)
    .type('application/problem+json; charset=utf-8')
    .send(problemOf(error.definition, error.detail, String(reply.request.id), error.errors));
}

/** JSON-pointer-ish paths from Ajv become dotted field names: `/user/email` -> `user.email`. */
function fieldErrorsOf(error: FastifyError): FieldError[] {
  const context = error.validationContext ?? 'body';
  return (error.validation ?? []).map((issue) => {
    let field = issue.instancePath.replace(/^\//, '').replaceAll('/', '.');
    const params = issue.params as Record<string, unknown>;
    if (issue.keyword === 'required' && typeof params.missingProperty === 'string') {
      field = field ? `${field}.${params.missingProperty}` : params.missingProperty;
    }
    if (issue.keyword === 'additionalProperties' && typeof params.additionalProperty === 'string') {
      field = field ? `${field}.${params.additionalProperty}` : params.additionalProperty;
      return { field, message: 'is not an accepted field' };
    }
    return { field: field || context, message: issue.message ?? 'is invalid' };
  });
}

/** Maps what Fastify and its plugins throw to our registry. */
export function toAppError(error: unknown): AppError | null {
  if (error instanceof AppError) return error;
  const fastifyError = error as FastifyError;
  if (fastifyError?.validation) {
    return new AppError(Errors.validationFailed, 'Some fields are missing or invalid', { errors: fieldErrorsOf(fastifyError) });
  }
  switch (fastifyError?.code) {
    case 'FST_ERR_CTP_INVALID_JSON_BODY':
    case 'FST_ERR_CTP_EMPTY_JSON_BODY':
      return new AppError(Errors.validationFailed, 'The request body is not valid JSON', {
        errors: [{ field: 'body', message: fastifyError.code === 'FST_ERR_CTP_EMPTY_JSON_BODY' ? 'is empty' : 'is not valid JSON' }],
      });
    case 'FST_ERR_CTP_INVALID_MEDIA_TYPE':
    case 'FST_INVALID_MULTIPART_CONTENT_TYPE':
      return new AppError(Errors.unsupportedMediaType, fastifyError.message);
    case 'FST_ERR_CTP_BODY_TOO_LARGE':
    case 'FST_REQ_FILE_TOO_LARGE':
      return new AppError(Errors.payloadTooLarge, 'The request body is larger than this server accepts');
    case 'FST_ERR_CTP_INVALID_CONTENT_LENGTH':
      return new AppError(Errors.badRequest, 'Content-Length does not match the body');
  }
  // SyntaxError from a JSON parser: also a client problem.
  if (fastifyError?.statusCode === 400 && error instanceof SyntaxError) {
    return new AppError(Errors.validationFailed, 'The request body is not valid JSON', { errors: [{ field: 'body', message: 'is not valid JSON' }] });
  }
  if (isDatabaseUnavailable(error)) {
    return new AppError(Errors.unavailable, 'The database is busy or unreachable; try again shortly', { headers: { 'Retry-After': '1' } });
  }
  const status = fastifyError?.statusCode;
  if (typeof status === 'number' && status >= 400 && status < 500) {
    const byStatus: Record<number, ErrorDefinition> = {
      401: Errors.unauthorized,
      403: Errors.forbidden,
      404: Errors.notFound,
      405: Errors.methodNotAllowed,
      413: Errors.payloadTooLarge,
      415: Errors.unsupportedMediaType,
      429: Errors.rateLimited,
    };
    return new AppError(byStatus[status] ?? Errors.badRequest, fastifyError.message);
  }
  return null;
}

/**
 * PostgreSQL refusing connections (too many clients, starting up or shutting down) or a
 * connection lost: passing, so a 503 the client may retry, not a 500. SQLSTATE class 08 is
 * connection exceptions; the pool's own wait for a free connection has no code.
 */
function isDatabaseUnavailable(error: unknown): boolean {
  const { code, message } = (error ?? {}) as { code?: unknown; message?: unknown };
  if (typeof code === 'string' && (code.startsWith('08') || ['53300', '57P01', '57P02', '57P03'].includes(code))) return true;
  return typeof message === 'string' && message === 'timeout exceeded when trying to connect';
}

export function registerProblemHandlers(app: FastifyInstance): void {
  app.addSchema(ProblemSchema);
  app.setErrorHandler((error: unknown, request: FastifyRequest, reply: FastifyReply) => {
    const known = toAppError(error);
    if (known) {
      if (known.status >= 500) request.log.error({ err: error }, 'request failed');
      return sendProblem(reply, known);
    }
    request.log.error({ err: error }, 'unexpected error');
    return sendProblem(reply, new AppError(Errors.internal, 'An unexpected error occurred. Quote the request id when reporting it.'));
  });
  app.setNotFoundHandler((request, reply) =>
    sendProblem(reply, new AppError(Errors.notFound, `No route ${request.method} ${request.url.split('?')[0]}`)),
  );
}
