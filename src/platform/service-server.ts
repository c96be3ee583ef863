import type { FastifyInstance, FastifyRequest } from 'fastify';
import type { Logger } from 'pino';
import type { Registry } from 'prom-client';
import { AppError, Errors } from '../core/errors.ts';
import type { RouteAuth } from '../gateway/auth.ts';
import { enforceRule } from '../gateway/auth.ts';
import { logWithPrincipal } from '../gateway/log-context.ts';
import { type ReadinessCheck, registerOperations } from '../gateway/operations.ts';
import { mountApiRoutes, type Route } from '../gateway/routes.ts';
import { createHttpApp } from '../gateway/server.ts';
import { INTERNAL_HEADER, type InternalTokens } from './internal-token.ts';

/**
 * The HTTP server of a service running alone (distributed mode), reached only by the gateway:
 * plain HTTP on BANTU_SERVICE_HOST:BANTU_SERVICE_PORT. Every request must carry the gateway's
 * signed internal header, whose principal the routes then use as if the gateway were
 * in-process; without a valid one the answer is 401, whatever the route. Only the probes
 * (/healthz, /readyz, /metrics) are open, for the orchestrator.
 */
export interface ServiceServerOptions {
  /** The service it serves: its spans' scope. */
  service: string;
  logger: Logger;
  routes: Route[];
  /** Routes only other services may call (their calls say so, signed: the gateway's never do). */
  internalRoutes?: Route[];
  tokens: InternalTokens;
  metrics: Registry;
  checks: Map<string, ReadinessCheck>;
  /** BANTU_METRICS_TOKEN: /metrics then wants it. */
  metricsToken?: string;
}

const PROBES = new Set(['/healthz', '/readyz', '/metrics']);

declare module 'fastify' {
  interface FastifyRequest {
    /** Signed by another service (not the gateway): the callers internal routes admit. */
    fromService: boolean;
  }
}

export async function createServiceServer(options: ServiceServerOptions): Promise<FastifyInstance> {
  // Every request is signed by the gateway (which sets X-Forwarded-For) or another service:
  // the forwarded client address can be trusted, and login throttling and audit see it.
  const app = createHttpApp({ logger: options.logger, trustProxy: true, part: options.service });
  app.decorateRequest('principal', null);
  app.decorateRequest('fromService', false);
  app.addHook('onRequest', async (request) => {
    if (PROBES.has(request.url.split('?', 1)[0] ?? '')) return;
    const token = request.headers[INTERNAL_HEADER];
    const claims = options.tokens.verify(typeof token === 'string' ? token : undefined, request.method, request.url);
    if (!claims) throw new AppError(Errors.unauthorized, 'This port answers only the Bantu gateway');
    request.principal = claims.principal;
    if (claims.principal) logWithPrincipal(request, claims.principal);
    request.fromService = claims.audience === 'service';
  });
  // The gateway has applied each route's rule already; applying it again costs nothing and
  // keeps a service right even behind a gateway of another version.
  app.addHook('onRoute', (route) => {
    const rule = route.config as RouteAuth | undefined;
    if (!rule?.auth) return;
    const auth = rule.auth;
    const check = async (request: FastifyRequest) => {
      if (!request.principal) {
        if (rule.credentialsOptional) return;
        throw new AppError(Errors.unauthorized, 'This route needs credentials');
      }
      enforceRule(request.principal, { ...rule, auth });
    };
    const existing = route.preHandler === undefined ? [] : Array.isArray(route.preHandler) ? route.preHandler : [route.preHandler];
    route.preHandler = [check, ...existing];
  });
  registerOperations(app, { metrics: options.metrics, checks: options.checks, metricsToken: options.metricsToken });
  await mountApiRoutes(app, options.routes);
  const internal = options.internalRoutes ?? [];
  if (internal.length > 0) {
    await app.register(async (scope) => {
      scope.addHook('onRequest', async (request) => {
        if (!request.fromService) throw new AppError(Errors.notFound, 'No such route');
      });
      await mountApiRoutes(scope, internal);
    });
  }
  return app;
}
