import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { request } from 'undici';
import { startServer, type TestServer } from './helpers/server.ts';

describe('gateway over HTTPS', () => {
  let server: TestServer;
  before(async () => {
    server = await startServer({ BANTU_HTTP_PORT: '0', BANTU_CORS_ORIGINS: 'https://app.example.com' });
  });
  after(async () => server?.close());

  it('answers health with security headers and a request id', async () => {
    const response = await server.request('GET', '/healthz');
    assert.equal(response.status, 200);
    assert.deepEqual(response.json, { status: 'ok' });
    assert.match(String(response.headers['strict-transport-security']), /max-age=\d+/);
    assert.equal(response.headers['x-content-type-options'], 'nosniff');
    assert.ok(response.headers['x-request-id']);
  });

  it('echoes a sane X-Request-Id and replaces an insane one', async () => {
    const echoed = await server.request('GET', '/healthz', { headers: { 'x-request-id': 'client-abc.123' } });
    assert.equal(echoed.headers['x-request-id'], 'client-abc.123');
    const replaced = await server.request('GET', '/healthz', { headers: { 'x-request-id': 'bad id with spaces\u00e9' } });
    assert.notEqual(replaced.headers['x-request-id'], 'bad id with spaces\u00e9');
    assert.ok(replaced.headers['x-request-id']);
  });

  it('reports readiness of each dependency', async () => {
    const response = await server.request('GET', '/readyz');
    assert.equal(response.status, 200);
    assert.equal(response.json.status, 'ok');
    for (const name of ['database', 'database_live', 'database_test']) assert.equal(response.json.dependencies[name].status, 'ok');
  });

  it('exposes Prometheus metrics with a request duration histogram by route and status', async () => {
    await server.request('GET', '/healthz');
    const response = await server.request('GET', '/metrics');
    assert.equal(response.status, 200);
    assert.match(String(response.headers['content-type']), /text\/plain/);
    assert.match(response.text, /http_request_duration_seconds_bucket\{[^}]*route="\/healthz"[^}]*status_code="200"/);
  });

  it('publishes an OpenAPI 3.1 document generated from the routes, and a docs page', async () => {
    const response = await server.request('GET', '/openapi.json');
    assert.equal(response.status, 200);
    assert.equal(response.json.openapi, '3.1.0');
    assert.ok(response.json.paths['/v1/tenants'].post, 'tenant creation is documented');
    assert.ok(response.json.paths['/healthz'].get);
    const docs = await server.request('GET', '/docs/');
    assert.equal(docs.status, 200);
    assert.match(docs.text, /<html/i);
  });

  it('answers an unknown route with problem+json 404', async () => {
    const response = await server.request('GET', '/v1/does-not-exist', { headers: { 'x-request-id': 'rid-404' } });
    assert.equal(response.status, 404);
    assert.match(String(response.headers['content-type']), /^application\/problem\+json/);
    assert.equal(response.json.code, 'not_found');
    assert.equal(response.json.status, 404);
    assert.equal(response.json.request_id, 'rid-404');
    assert.ok(response.json.type && response.json.title && response.json.detail);
  });

  it('answers invalid JSON with 422 validation_failed, not 500', async () => {
    const response = await server.request('POST', '/v1/tenants', {
      auth: server.operatorToken,
      body: '{"name": ',
      headers: { 'content-type': 'application/json' },
    });
    assert.equal(response.status, 422);
    assert.equal(response.json.code, 'validation_failed');
    assert.equal(response.json.errors[0].field, 'body');
  });

  it('rejects plain HTTP with 403 https_required and no redirect', async () => {
    const response = await request(`http://127.0.0.1:${server.started.httpPort}/v1/tenants`, { method: 'GET' });
    const body = (await response.body.json()) as { code: string };
    assert.equal(response.statusCode, 403);
    assert.equal(response.headers.location, undefined);
    assert.equal(body.code, 'https_required');
  });

  it('allows configured CORS origins only', async () => {
    const allowed = await server.request('OPTIONS', '/v1/tenants', {
      headers: { origin: 'https://app.example.com', 'access-control-request-method': 'POST' },
    });
    assert.equal(allowed.headers['access-control-allow-origin'], 'https://app.example.com');
    const other = await server.request('OPTIONS', '/v1/tenants', {
      headers: { origin: 'https://evil.example.com', 'access-control-request-method': 'POST' },
    });
    assert.equal(other.headers['access-control-allow-origin'], undefined);
  });
});

describe('tenants', () => {
  let server: TestServer;
  before(async () => {
    server = await startServer();
  });
  after(async () => server?.close());

  it('creates a tenant with the operator token and returns its four keys once', async () => {
    const response = await server.request('POST', '/v1/tenants', { auth: server.operatorToken, json: { name: 'Acme' } });
    assert.equal(response.status, 201);
    assert.equal(response.json.name, 'Acme');
    assert.match(response.json.id, /^ten_/);
    assert.match(response.json.keys.live.account_key, /^acc_[0-9A-Za-z]{38}_live$/);
    assert.match(response.json.keys.live.application_key, /^app_[0-9A-Za-z]{38}_live$/);
    assert.match(response.json.keys.test.account_key, /^acc_[0-9A-Za-z]{38}_test$/);
    assert.match(response.json.keys.test.application_key, /^app_[0-9A-Za-z]{38}_test$/);

    const list = await server.request('GET', '/v1/tenants', { auth: server.operatorToken });
    assert.equal(list.status, 200);
    assert.deepEqual(list.json.data.map((t: { name: string }) => t.name).sort(), ['Acme', 'default']);
    assert.equal(list.json.next_cursor, null);
    assert.ok(!JSON.stringify(list.json).includes('acc_'), 'lists never show keys');
  });

  it('refuses tenant creation without or with a wrong operator token', async () => {
    const none = await server.request('POST', '/v1/tenants', { json: { name: 'NoAuth' } });
    assert.equal(none.status, 401);
    assert.equal(none.json.code, 'unauthorized');
    assert.match(String(none.headers['www-authenticate']), /Bearer/);
    const wrong = await server.request('POST', '/v1/tenants', { auth: 'op_wrong', json: { name: 'NoAuth' } });
    assert.equal(wrong.status, 401);
    const accountKey = await server.request('POST', '/v1/tenants', { basic: server.keys.test.account_key, json: { name: 'NoAuth' } });
    assert.equal(accountKey.status, 403, 'a valid account key is not the operator');
    assert.equal(accountKey.json.code, 'forbidden');
  });

  it('validates the body: missing name, unknown field, duplicate name', async () => {
    const missing = await server.request('POST', '/v1/tenants', { auth: server.operatorToken, json: {} });
    assert.equal(missing.status, 422);
    assert.deepEqual(missing.json.errors.map((e: { field: string }) => e.field), ['name']);
    const unknown = await server.request('POST', '/v1/tenants', { auth: server.operatorToken, json: { name: 'X', plan: 'gold' } });
    assert.equal(unknown.status, 422);
    assert.equal(unknown.json.errors[0].field, 'plan');
    const duplicate = await server.request('POST', '/v1/tenants', { auth: server.operatorToken, json: { name: 'default' } });
    assert.equal(duplicate.status, 409);
  });

  it('paginates tenants with a cursor', async () => {
    for (const name of ['P1', 'P2', 'P3']) await server.request('POST', '/v1/tenants', { auth: server.operatorToken, json: { name } });
    const seen: string[] = [];
    let cursor: string | null = null;
    do {
      const page = await server.request('GET', `/v1/tenants?limit=2${cursor ? `&cursor=${cursor}` : ''}`, { auth: server.operatorToken });
      assert.equal(page.status, 200);
      assert.ok(page.json.data.length <= 2);
      seen.push(...page.json.data.map((t: { name: string }) => t.name));
      cursor = page.json.next_cursor;
    } while (cursor);
    assert.equal(new Set(seen).size, seen.length, 'no tenant twice');
    for (const name of ['P1', 'P2', 'P3', 'default']) assert.ok(seen.includes(name));
    const bad = await server.request('GET', '/v1/tenants?limit=500', { auth: server.operatorToken });
    assert.equal(bad.status, 422);
  });
});
