import assert from 'node:assert/strict';
import { Writable } from 'node:stream';
import { describe, it } from 'node:test';
import pino from 'pino';
import { Registry } from 'prom-client';
import { route } from './routes.ts';
import { createGateway } from './server.ts';

/** A log destination that keeps each JSON line. */
function lineSink(): { lines: string[]; sink: Writable } {
  const lines: string[] = [];
  const sink = new Writable({
    write(chunk, _encoding, done) {
      lines.push(...String(chunk).split('\n').filter(Boolean));
      done();
    },
  });
  return { lines, sink };
}

// Log lines of an authenticated request: JSON, with the request id, the tenant and the
// environment, and never the credential (Fastify inject, no network).
describe('request log lines', () => {
  it('carry request_id, tenant_id and environment once the principal is known, never the key', async () => {
    const { lines, sink } = lineSink();
    const key = 'sk_test_never_in_the_logs_0123456789';
    const gateway = await createGateway({
      logger: pino({ level: 'info', base: { service: 'bantu' } }, sink),
      corsOrigins: [],
      maxUploadBytes: 1024,
      metrics: new Registry(),
      checks: new Map(),
      verifiers: [{ verify: async (credential) => (credential === key ? { kind: 'account_key', keyId: 'key_1', tenantId: 'ten_1', environment: 'test' } : null) }],
      version: 'test',
      routes: [
        route({
          method: 'GET',
          url: '/whoami',
          auth: ['account_key'],
          schema: {},
          handler: async (request) => {
            request.log.info('handled');
            return { ok: true };
          },
        }),
      ],
    });
    try {
      const response = await gateway.inject({ method: 'GET', url: '/v1/whoami', headers: { authorization: `Bearer ${key}`, 'x-request-id': 'req-log-1' } });
      assert.equal(response.statusCode, 200, response.body);
    } finally {
      await gateway.close();
    }
    const records = lines.map((line) => JSON.parse(line));
    const handled = records.find((record) => record.msg === 'handled');
    assert.ok(handled, lines.join('\n'));
    assert.equal(handled.service, 'bantu');
    assert.equal(handled.request_id, 'req-log-1');
    assert.equal(handled.tenant_id, 'ten_1');
    assert.equal(handled.environment, 'test');
    const completed = records.find((record) => record.msg === 'request completed');
    assert.equal(completed?.request_id, 'req-log-1');
    assert.ok(!lines.join('\n').includes(key), 'the key is in no log line');
  });

  it("carry the caller's trace_id with tracing off, on every line of the request; a malformed traceparent is ignored", async () => {
    const { lines, sink } = lineSink();
    const gateway = await createGateway({
      logger: pino({ level: 'info' }, sink),
      corsOrigins: [],
      maxUploadBytes: 1024,
      metrics: new Registry(),
      checks: new Map(),
      verifiers: [],
      version: 'test',
      routes: [route({ method: 'GET', url: '/ping', schema: {}, handler: async () => ({ ok: true }) })],
    });
    const traceId = '4bf92f3577b34da6a3ce929d0e0e4736';
    try {
      for (const [requestId, traceparent] of [
        ['req-traced', `00-${traceId}-00f067aa0ba902b7-01`],
        ['req-malformed', `00-${traceId}-not-a-span-01`],
        ['req-zero', `00-${'0'.repeat(32)}-00f067aa0ba902b7-01`],
      ]) {
        const response = await gateway.inject({ method: 'GET', url: '/v1/ping', headers: { traceparent, 'x-request-id': requestId } });
        assert.equal(response.statusCode, 200, response.body);
      }
    } finally {
      await gateway.close();
    }
    const records = lines.map((line) => JSON.parse(line));
    const traced = records.filter((record) => record.request_id === 'req-traced');
    assert.deepEqual(traced.map((record) => record.msg), ['incoming request', 'request completed']);
    for (const record of traced) assert.equal(record.trace_id, traceId);
    for (const record of records.filter((record) => record.request_id !== 'req-traced')) assert.equal(record.trace_id, undefined, JSON.stringify(record));
  });
});
