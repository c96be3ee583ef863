import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { Type } from '@sinclair/typebox';
import Fastify, { type FastifyInstance } from 'fastify';
import { registerProblemHandlers } from './problem.ts';
import { describeRoutes, mountRoutes, type Route, route } from './routes.ts';

const Params = Type.Object({ id: Type.String({ maxLength: 10 }) });

const manifest: Route[] = [
  route({
    method: 'GET',
    url: '/things/:id',
    auth: ['account_key', 'user'],
    scope: 'things:read',
    errors: [404],
    schema: { params: Params, response: { 200: Type.Object({ id: Type.String() }) } },
    handler: async (request) => ({ id: request.params.id }),
  }),
  route({
    method: 'POST',
    url: '/things',
    body: 'stream',
    schema: {},
    handler: async (request) => {
      let bytes = 0;
      for await (const chunk of request.raw) bytes += (chunk as Buffer).length;
      return { bytes, multipart: request.isMultipart() };
    },
  }),
  route({ method: 'GET', url: '/.well-known/thing', at: 'root', schema: {}, handler: async () => ({ root: true }) }),
];

async function mounted(): Promise<{ app: FastifyInstance; schemas: Map<string, Record<string, unknown>> }> {
  const app = Fastify() as unknown as FastifyInstance;
  registerProblemHandlers(app);
  const schemas = new Map<string, Record<string, unknown>>();
  app.addHook('onRoute', (options) => void schemas.set(`${options.method} ${options.url}`, (options.schema?.response ?? {}) as Record<string, unknown>));
  await app.register(async (v1) => mountRoutes(v1, manifest.filter((r) => r.at !== 'root')), { prefix: '/v1' });
  await mountRoutes(app, manifest.filter((r) => r.at === 'root'));
  return { app, schemas };
}

describe('route manifests', () => {
  it('describe each route for the registry as plain JSON: method, url, auth kinds, scope, body kind, no handler', () => {
    const described = describeRoutes(manifest);
    assert.deepEqual(JSON.parse(JSON.stringify(described)), [
      { method: 'GET', url: '/things/:id', at: 'v1', body: 'json', auth: ['account_key', 'user'], scope: 'things:read' },
      { method: 'POST', url: '/things', at: 'v1', body: 'stream' },
      { method: 'GET', url: '/.well-known/thing', at: 'root', body: 'json' },
    ]);
  });

  it('mount with typed handlers, and document 401/403 from auth, 422 from input schemas and the route\'s own errors as the Problem schema', async () => {
    const { app, schemas } = await mounted();
    const response = await app.inject({ method: 'GET', url: '/v1/things/abc' });
    assert.equal(response.statusCode, 200);
    assert.deepEqual(response.json(), { id: 'abc' });
    const documented = schemas.get('GET /v1/things/:id') ?? {};
    assert.deepEqual(Object.keys(documented).sort(), ['200', '401', '403', '404', '422']);
    assert.deepEqual(documented[404], { $ref: 'Problem#', description: 'problem+json' });
    assert.deepEqual(Object.keys(schemas.get('POST /v1/things') ?? {}), [], 'no auth, no inputs: no implied errors');
    const invalid = await app.inject({ method: 'GET', url: '/v1/things/far-too-long-an-id' });
    assert.equal(invalid.statusCode, 422);
    assert.equal(invalid.json().code, 'validation_failed');
    await app.close();
  });

  it('hand stream routes their body unread, whatever its type (no JSON parser, no 1 MiB limit)', async () => {
    const { app } = await mounted();
    const notJson = await app.inject({ method: 'POST', url: '/v1/things', headers: { 'content-type': 'application/json' }, payload: '{not json' });
    assert.equal(notJson.statusCode, 200, notJson.body);
    assert.deepEqual(notJson.json(), { bytes: 9, multipart: false });
    const large = await app.inject({ method: 'POST', url: '/v1/things', headers: { 'content-type': 'application/octet-stream' }, payload: Buffer.alloc(2 * 1024 * 1024) });
    assert.deepEqual(large.json(), { bytes: 2 * 1024 * 1024, multipart: false });
    const root = await app.inject({ method: 'GET', url: '/.well-known/thing' });
    assert.deepEqual(root.json(), { root: true });
    await app.close();
  });
});
