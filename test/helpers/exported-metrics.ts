import assert from 'node:assert/strict';
import Fastify from 'fastify';
import { Registry } from 'prom-client';
import { registerOperations } from '../../src/gateway/operations.ts';
import { exportedNames } from './promql.ts';
import type { TestServer } from './server.ts';

/**
 * The metric names a running Bantu exports: read from the server's /metrics after a few
 * requests (so the request histograms have series), plus the one gauge only a distributed
 * gateway has (its registry of live instances), read from the same operations code given one.
 */
export async function metricsExportedBy(server: TestServer): Promise<Set<string>> {
  assert.equal((await server.request('GET', '/healthz')).status, 200);
  assert.equal((await server.request('GET', '/v1/no-such-route')).status, 404);
  const metrics = await server.request('GET', '/metrics');
  assert.equal(metrics.status, 200);
  const exported = exportedNames(metrics.text);
  const gateway = Fastify();
  registerOperations(gateway, { metrics: new Registry(), checks: new Map(), services: () => ({ files: 1 }) });
  for (const name of exportedNames((await gateway.inject({ method: 'GET', url: '/metrics' })).body)) exported.add(name);
  await gateway.close();
  return exported;
}
