import multipart from '@fastify/multipart';
import type { Static, TSchema } from '@sinclair/typebox';
import type { FastifyInstance, FastifyReply, FastifyRequest, FastifySchema } from 'fastify';
import { bindTrace, trace } from '../core/trace.ts';
import type { RouteAuth } from './auth.ts';
import { ProblemRef } from './problem.ts';

/**
 * A service's HTTP surface as data: one entry per route, with who may call it, its schemas
 * and its handler. The gateway mounts the entries of in-process services itself; a service
 * running alone mounts its own and announces `describeRoutes()` (no handlers, plain JSON) in
 * the registry, so a gateway in another process knows each route's auth rule without the
 * service's code.
 */
export type HttpMethod = 'GET' | 'POST' | 'PUT' | 'PATCH' | 'DELETE';

export interface RouteSchemas extends Omit<FastifySchema, 'params' | 'querystring' | 'body' | 'headers' | 'response'> {
  params?: TSchema;
  querystring?: TSchema;
  body?: TSchema;
  headers?: TSchema;
  /** Success responses, by status. Error responses (problem+json) are added from `errors` and the auth rule. */
  response?: Record<number, unknown>;
  tags?: string[];
  summary?: string;
  description?: string;
  hide?: boolean;
}

type StaticOf<T> = T extends TSchema ? Static<T> : unknown;

/** The request as the route's schemas type it: what passed validation is what the handler reads. */
export type RouteRequest<S extends RouteSchemas> = FastifyRequest<{
  Params: StaticOf<S['params']>;
  Querystring: StaticOf<S['querystring']>;
  Body: StaticOf<S['body']>;
  Headers: StaticOf<S['headers']>;
}>;

export interface Route<S extends RouteSchemas = RouteSchemas> extends RouteAuth {
  method: HttpMethod;
  /** Under `/v1`, unless `at: 'root'` (the JWKS). */
  url: string;
  at?: 'v1' | 'root';
  /**
   * `json` (default): a JSON body of at most 1 MiB, parsed and validated before the handler.
   * `stream`: the body reaches the handler unread, raw or as streamed multipart (uploads).
   */
  body?: 'json' | 'stream';
  /** What a request sent with no body at all counts as, before validation (without it, no body fails a body schema). */
  absentBody?: StaticOf<S['body']>;
  schema: S;
  /** Error statuses the route itself can answer (401 and 403 come with `auth`, 422 with input schemas). */
  errors?: number[];
  handler(request: RouteRequest<S>, reply: FastifyReply): Promise<unknown>;
}

/** Declares a route; only here to infer the request's types from its schemas. */
export function route<S extends RouteSchemas>(spec: Route<S>): Route {
  return spec as unknown as Route;
}

/** What the registry carries of a route: enough for a gateway to authenticate and route it. */
export interface RouteDescription {
  method: HttpMethod;
  url: string;
  at: 'v1' | 'root';
  body: 'json' | 'stream';
  auth?: RouteAuth['auth'];
  scope?: string;
  publicForApplications?: boolean;
  credentialsOptional?: boolean;
}

export function describeRoutes(routes: readonly Route[]): RouteDescription[] {
  return routes.map((r) => ({
    method: r.method,
    url: r.url,
    at: r.at ?? 'v1',
    body: r.body ?? 'json',
    ...(r.auth ? { auth: r.auth } : {}),
    ...(r.scope ? { scope: r.scope } : {}),
    ...(r.publicForApplications ? { publicForApplications: true } : {}),
    ...(r.credentialsOptional ? { credentialsOptional: true } : {}),
  }));
}

/** The problem responses a route documents: its own, plus those its auth rule and inputs imply. */
function errorResponses(spec: Route): Record<number, unknown> {
  const statuses = new Set(spec.errors ?? []);
  if (spec.auth) {
    statuses.add(401);
    statuses.add(403);
  }
  const { params, querystring, body, headers } = spec.schema;
  if (params || querystring || body || headers) statuses.add(422);
  return Object.fromEntries([...statuses].sort().map((status) => [status, ProblemRef]));
}

function absentBodyDefault(body: unknown) {
  return async (request: FastifyRequest) => {
    if (request.body === undefined) request.body = structuredClone(body);
  };
}

function toFastify(spec: Route) {
  return {
    method: spec.method,
    url: spec.url,
    config: { auth: spec.auth, scope: spec.scope, publicForApplications: spec.publicForApplications, credentialsOptional: spec.credentialsOptional },
    schema: { ...spec.schema, response: { ...errorResponses(spec), ...spec.schema.response } },
    ...(spec.absentBody === undefined ? {} : { preValidation: absentBodyDefault(spec.absentBody) }),
    handler: inTraceContext(spec.handler as Handler),
  };
}

type Handler = (request: FastifyRequest, reply: FastifyReply) => Promise<unknown>;

/**
 * With tracing on, what the handler does in the principal's name (the events it appends, the
 * services it calls) joins the request's server span (src/gateway/http-tracing.ts): the
 * principal carries it (src/core/trace.ts bindTrace).
 */
function inTraceContext(handler: Handler): Handler {
  return (request, reply) => {
    if (request.traceContext !== null && request.principal) request.principal = bindTrace(request.principal, request.traceContext);
    return handler(request, reply);
  };
}

/**
 * A module's routes as the embedded gateway mounts them: with tracing on, the request's server
 * span says which module served it (`bantu.service`), as the module's own server span does in
 * distributed mode. An attribute, not a span of its own: a second span per request cost a
 * quarter of the traced rate (bench gateway/tracing-on: 0.70 with it, 0.92 without).
 */
export function routesOf(module: { name: string; routes: readonly Route[] }): Route[] {
  return module.routes.map((spec) => {
    const handler = spec.handler as Handler;
    return {
      ...spec,
      handler: (request: FastifyRequest, reply: FastifyReply) => {
        if (request.traceContext !== null) trace.getSpan(request.traceContext)?.setAttribute('bantu.service', module.name);
        return handler(request, reply);
      },
    };
  });
}

/**
 * Mounts routes on a Fastify scope. Stream routes get a scope of their own where every body
 * passes through unparsed (no JSON parser, no 1 MiB limit) and multipart is parsed as a stream.
 */
export async function mountRoutes(app: FastifyInstance, routes: readonly Route[]): Promise<void> {
  for (const spec of routes) if ((spec.body ?? 'json') === 'json') app.route(toFastify(spec));
  const streamed = routes.filter((spec) => spec.body === 'stream');
  if (streamed.length === 0) return;
  await app.register(async (scope) => {
    scope.removeAllContentTypeParsers();
    scope.addContentTypeParser('*', (_request, _payload, done) => done(null));
    await scope.register(multipart, { throwFileSizeLimit: false });
    for (const spec of streamed) scope.route(toFastify(spec));
  });
}

/** Mounts routes where they live: at the root when they say so (the JWKS), else under `/v1`. */
export async function mountApiRoutes(app: FastifyInstance, routes: readonly Route[]): Promise<void> {
  await mountRoutes(app, routes.filter((r) => r.at === 'root'));
  await app.register(
    async (v1) => {
      await mountRoutes(v1, routes.filter((r) => (r.at ?? 'v1') === 'v1'));
    },
    { prefix: '/v1' },
  );
}
