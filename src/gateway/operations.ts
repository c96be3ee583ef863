import { Type } from '@sinclair/typebox';
import type { FastifyInstance } from 'fastify';
import { Histogram, type Registry } from 'prom-client';

/**
 * Health, readiness and metrics: no credentials. Readiness asks every registered
 * dependency; one that is down (or takes over 2 s) makes the answer 503.
 */
export type ReadinessCheck = () => Promise<void>;

export interface OperationsDeps {
  metrics: Registry;
  checks: Map<string, ReadinessCheck>;
  /** Distributed gateway: the live instance count of every service (informative: a service down leaves the others reachable). */
  services?: () => Record<string, number>;
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
      const dependencies: Record<string, { status: 'ok' | 'down'; detail?: string }> = {};
      await Promise.all(
        [...deps.checks].map(async ([name, check]) => {
          let timedOut = false;
          try {
            await Promise.race([
              check(),
              new Promise((_, reject) =>
                setTimeout(() => {
                  timedOut = true;
                  reject(new Error('timed out'));
                }, 2000).unref(),
              ),
            ]);
            dependencies[name] = { status: 'ok' };
          } catch (error) {
            // The cause (addresses, driver messages) goes to the log, never to the client.
            request.log.warn({ err: error, dependency: name }, 'readiness check failed');
            dependencies[name] = { status: 'down', detail: timedOut ? 'no answer within 2 s' : 'not answering' };
          }
        }),
      );
      const ready = Object.values(dependencies).every((d) => d.status === 'ok');
      const services = deps.services && Object.fromEntries(Object.entries(deps.services()).map(([name, instances]) => [name, { instances }]));
      return reply.code(ready ? 200 : 503).send({ status: ready ? 'ok' : 'unavailable', dependencies, ...(services ? { services } : {}) });
    },
  );

  app.get('/metrics', { schema: { tags: ['operations'], summary: 'Prometheus metrics' } }, async (_request, reply) => {
    reply.type(deps.metrics.contentType);
    return deps.metrics.metrics();
  });
}
