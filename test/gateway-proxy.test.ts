import assert from 'node:assert/strict';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { after, before, describe, it } from 'node:test';
import type { FastifyInstance } from 'fastify';
import pino from 'pino';
import { Registry } from 'prom-client';
import { request } from 'undici';
import { INTERNAL_HEADER, InternalTokens } from '../src/gateway/internal-token.ts';
import { type ServiceDirectory, ServiceProxy } from '../src/gateway/proxy.ts';
import type { RouteDescription } from '../src/gateway/routes.ts';
import { createGateway } from '../src/gateway/server.ts';
import type { ServiceName } from '../src/platform/catalogue.ts';
import type { ServiceInstance } from '../src/platform/registry.ts';
import { freePort } from './helpers/distributed.ts';

/**
 * The gateway's proxy against real HTTP upstreams, with a fixed directory standing in for the
 * registry: one instance that refuses connections (a process just killed) and one that works.
 * A connection failure before any answer is retried once on the other instance for GET and for
 * writes with an Idempotency-Key; any other write gets 502, and the working instance never sees
 * a second copy of it.
 */
const SECRET = 'a-secret-key-of-the-test-installation-0123456789';

describe('gateway proxy: retries after a connection failure', () => {
  const tokens = new InternalTokens(SECRET);
  const hits: Array<{ method: string; url: string; body: string; principal: unknown }> = [];
  let upstream: http.Server;
  let gateway: FastifyInstance;
  let base: string;
  const suspected: string[] = [];

  before(async () => {
    upstream = http.createServer((req, res) => {
      let body = '';
      req.on('data', (chunk) => (body += chunk));
      req.on('end', () => {
        const claims = tokens.verify(req.headers[INTERNAL_HEADER] as string, req.method ?? '', req.url ?? '');
        hits.push({ method: req.method ?? '', url: req.url ?? '', body, principal: claims?.principal });
        res.writeHead(claims ? (req.method === 'POST' ? 201 : 200) : 401, { 'content-type': 'application/json' });
        res.end(JSON.stringify({ ok: Boolean(claims) }));
      });
    });
    await new Promise<void>((resolve) => upstream.listen(0, '127.0.0.1', resolve));
    const working: ServiceInstance = instance('working', `http://127.0.0.1:${(upstream.address() as AddressInfo).port}`);
    // Nothing listens there: every connection is refused, as to a process killed a moment ago.
    const dead: ServiceInstance = instance('dead', `http://127.0.0.1:${await freePort()}`);
    const routes: RouteDescription[] = [
      { method: 'GET', url: '/things', at: 'v1', body: 'json' },
      { method: 'POST', url: '/things', at: 'v1', body: 'stream' },
    ];
    const directory: ServiceDirectory = {
      instances: (service: ServiceName) => (service === 'files' ? [dead, working] : []),
      routes: () => new Map([['files', routes]]),
      unseen: () => [],
      // Kept in the list on purpose: each request meets the dead instance in its turn.
      suspect: (id) => void suspected.push(id),
      onChange: () => undefined,
    };
    const logger = pino({ level: 'silent' });
    const proxy = new ServiceProxy({ directory, tokens, verifiers: [], logger });
    gateway = await createGateway({ logger, corsOrigins: [], maxUploadBytes: 1024, metrics: new Registry(), checks: new Map(), verifiers: [], routes: [], proxy, version: 'test' });
    await gateway.listen({ host: '127.0.0.1', port: 0 });
    base = `http://127.0.0.1:${(gateway.server.address() as AddressInfo).port}`;
  });
  after(async () => {
    await gateway?.close();
    await new Promise((resolve) => upstream?.close(resolve));
  });

  const send = async (method: 'GET' | 'POST', headers: Record<string, string> = {}, body?: string) => {
    const answer = await request(`${base}/v1/things`, { method, headers: { 'content-type': 'text/plain', ...headers }, body });
    return { status: answer.statusCode, json: (await answer.body.json()) as Record<string, unknown> };
  };

  it('GET: every read answers, those that met the dead instance first retried on the working one', async () => {
    suspected.length = 0;
    hits.length = 0;
    for (let i = 0; i < 4; i++) assert.equal((await send('GET')).status, 200);
    assert.ok(suspected.length >= 1, 'some reads met the dead instance first');
    assert.equal(hits.filter((hit) => hit.method === 'GET').length, 4, 'each read reached the working instance once');
  });

  it('a write without Idempotency-Key that met the dead instance is not retried: 502 upstream_failed, and no copy reaches the working instance', async () => {
    suspected.length = 0;
    hits.length = 0;
    const answers = [];
    for (let i = 0; i < 4; i++) answers.push(await send('POST', {}, `write ${i}`));
    const failed = answers.filter((answer) => answer.status === 502);
    assert.ok(failed.length >= 1, 'some writes met the dead instance first');
    assert.equal(failed.length, suspected.length, 'each write that met the dead instance failed');
    for (const answer of failed) assert.equal(answer.json.code, 'upstream_failed');
    assert.equal(hits.length, 4 - failed.length, 'the working instance saw only the writes sent to it first');
  });

  it('a write with an Idempotency-Key is retried on the working instance, its body intact', async () => {
    suspected.length = 0;
    hits.length = 0;
    for (let i = 0; i < 4; i++) assert.equal((await send('POST', { 'idempotency-key': `key-${i}` }, `keyed ${i}`)).status, 201);
    assert.ok(suspected.length >= 1, 'some writes met the dead instance first');
    assert.deepEqual(hits.map((hit) => hit.body).sort(), ['keyed 0', 'keyed 1', 'keyed 2', 'keyed 3']);
  });
});

function instance(id: string, address: string): ServiceInstance {
  return { id, service: 'files', address, version: 'test', keyId: 'k', routes: [] };
}
