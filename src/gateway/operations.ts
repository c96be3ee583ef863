import { createHash, timingSafeEqual, X509Certificate } from 'node:crypto';
import { Type } from '@sinclair/typebox';
import type { FastifyInstance } from 'fastify';
import { Gauge, Histogram, type Registry } from 'prom-client';
import { AppError, Errors } from '../core/errors.ts';

/**
 * Health, readiness and metrics: no credentials, except for /metrics when
 * BANTU_METRICS_TOKEN is set. Readiness asks every registered dependency; one that is down
 * (or takes over 2 s) makes the answer 503.
 */
export type ReadinessCheck = () => Promise<void>;

export interface OperationsDeps {
  metrics: Registry;
  checks: Map<string, ReadinessCheck>;
  /** Distributed gateway: the live instance count of every service (informative: a service down leaves the others reachable). */
  services?: () => Record<string, number>;
  /** The gateway's TLS certificate (PEM): its expiry is exported, for the alert before it lapses. */
  certificate?: string;
  /** BANTU_METRICS_TOKEN: when set, /metrics wants it as a Bearer token. */
  metricsToken?: string;
}

/** Compares digests, so that neither the length nor the bytes of the token leak through timing. */
function bearerMatches(header: string | undefined, token: string): boolean {
  const presented = /^Bearer (\S+)$/i.exec(header ?? '')?.[1];
  if (!presented) return false;
  const digest = (value: string) => createHash('sha256').update(value).digest();
  return timingSafeEqual(digest(presented), digest(token));
}

type DependencyState = { status: 'ok' | 'down'; detail?: string };

/** Runs every check at once; one that fails or takes over 2 s is down. `onDown` gets the cause (for the log, never the client). */
async function runChecks(checks: Map<string, ReadinessCheck>, onDown: (name: string, error: unknown) => void): Promise<Record<string, DependencyState>> {
  const dependencies: Record<string, DependencyState> = {};
  await Promise.all(
    [...checks].map(async ([name, check]) => {
      let timedOut = false;
      let timer: NodeJS.Timeout | undefined;
      try {
        await Promise.race([
          check(),
          new Promise((_, reject) => {
            timer = setTimeout(() => {
              timedOut = true;
              reject(new Error('timed out'));
            }, 2000).unref();
          }),
        ]);
        dependencies[name] = { status: 'ok' };
      } catch (error) {
        onDown(name, error);
        dependencies[name] = { status: 'down', detail: timedOut ? 'no answer within 2 s' : 'not answering' };
      } finally {
        clearTimeout(timer);
      }
    }),
  );
  return dependencies;
}

/** What /readyz says, as gauges (read at scrape time), and the gateway's view of its services and certificate. */
function registerOperationsGauges(app: FastifyInstance, deps: OperationsDeps): void {
  new Gauge({
    name: 'bantu_readiness_dependency_up',
    help: 'Whether this process reaches each dependency /readyz checks (1) or not (0)',
    labelNames: ['dependency'],
    registers: [deps.metrics],
    async collect() {
      const states = await runChecks(deps.checks, (dependency, error) => app.log.warn({ err: error, dependency }, 'readiness check failed'));
      for (const [dependency, state] of Object.entries(states)) this.set({ dependency }, state.status === 'ok' ? 1 : 0);
    },
  });
  const services = deps.services;
  if (services) {
    new Gauge({
      name: 'bantu_gateway_service_instances',
      help: 'Live instances of each service the gateway routes to (from the registry)',
      labelNames: ['upstream'],
      registers: [deps.metrics],
      collect() {
        for (const [upstream, instances] of Object.entries(services())) this.set({ upstream }, instances);
      },
    });
  }
  if (deps.certificate) {
    const expiry = Date.parse(new X509Certificate(deps.certificate).validTo) / 1000;
    new Gauge({
      name: 'bantu_tls_certificate_expiry_timestamp_seconds',
      help: 'When the TLS certificate the gateway serves expires (Unix time)',
      registers: [deps.metrics],
      collect() {
        this.set(expiry);
      },
    });
  }
}

export function registerOperations(app: FastifyInstance, deps: OperationsDeps): void {
  const duration = new Histogram({
    name: 'http_request_duration_seconds',
    help: 'HTTP request duration by route and status',
    labelNames: ['method', 'route', 'status_code'],
    buckets: [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10],
    registers: [deps.metrics],
  });
  app.addHook('onResponse', (request, reply, done) => {
    duration.observe(
      { method: request.method, route: request.routeOptions.url ?? 'unmatched', status_code: String(reply.statusCode) },
      reply.elapsedTime / 1000,
    );
    done();
  });
  registerOperationsGauges(app, deps);

  app.get(
    '/healthz',
    { schema: { tags: ['operations'], summary: 'Liveness', response: { 200: Type.Object({ status: Type.Literal('ok') }) } } },
    async () => ({ status: 'ok' as const }),
  );

  const DependencyState = Type.Object({ status: Type.Union([Type.Literal('ok'), Type.Literal('down')]), detail: Type.Optional(Type.String()) });
  const Readiness = Type.Object({
    status: Type.Union([Type.Literal('ok'), Type.Literal('unavailable')]),
    dependencies: Type.Record(Type.String(), DependencyState),
    services: Type.Optional(Type.Record(Type.String(), Type.Object({ instances: Type.Integer() }))),
  });
  app.get(
    '/readyz',
    { schema: { tags: ['operations'], summary: 'Readiness, with the state of each dependency', response: { 200: Readiness, 503: Readiness } } },
    async (request, reply) => {
      // The cause (addresses, driver messages) goes to the log, never to the client.
      const dependencies = await runChecks(deps.checks, (dependency, error) => request.log.warn({ err: error, dependency }, 'readiness check failed'));
      const ready = Object.values(dependencies).every((d) => d.status === 'ok');
      const services = deps.services && Object.fromEntries(Object.entries(deps.services()).map(([name, instances]) => [name, { instances }]));
      return reply.code(ready ? 200 : 503).send({ status: ready ? 'ok' : 'unavailable', dependencies, ...(services ? { services } : {}) });
    },
  );

  const metricsToken = deps.metricsToken;
  const metricsSummary = metricsToken ? 'Prometheus metrics (Bearer BANTU_METRICS_TOKEN)' : 'Prometheus metrics';
  app.get('/metrics', { schema: { tags: ['operations'], summary: metricsSummary } }, async (request, reply) => {
    if (metricsToken && !bearerMatches(request.headers.authorization, metricsToken)) {
      reply.header('www-authenticate', 'Bearer realm="metrics"');
      throw new AppError(Errors.unauthorized, '/metrics needs Authorization: Bearer <BANTU_METRICS_TOKEN>');
    }
    reply.type(deps.metrics.contentType);
    return deps.metrics.metrics();
  });
}
