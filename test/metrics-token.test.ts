import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { Agent, fetch } from 'undici';
import { startServer, type TestServer } from './helpers/server.ts';

const TOKEN = 'metrics-token-of-this-test-0123456789';

describe('/metrics behind BANTU_METRICS_TOKEN', () => {
  let server: TestServer;
  let agent: Agent;
  before(async () => {
    server = await startServer({ BANTU_METRICS_TOKEN: TOKEN });
    agent = new Agent({ connect: { ca: server.ca } });
  });
  after(async () => {
    await agent?.close();
    await server?.close();
  });

  const scrape = (headers: Record<string, string> = {}) => fetch(`${server.url}/metrics`, { headers, dispatcher: agent });

  it('answers 401 problem+json with a Bearer challenge without the token, or with another one', async () => {
    const attempts: Array<Record<string, string>> = [{}, { authorization: 'Bearer not-the-metrics-token-at-all' }, { authorization: `Basic ${Buffer.from(`${TOKEN}:`).toString('base64')}` }];
    for (const headers of attempts) {
      const response = await scrape(headers);
      assert.equal(response.status, 401, JSON.stringify(headers));
      assert.match(String(response.headers.get('content-type')), /application\/problem\+json/);
      assert.match(String(response.headers.get('www-authenticate')), /^Bearer/);
      const problem = (await response.json()) as { code: string };
      assert.equal(problem.code, 'unauthorized');
    }
  });

  it('serves the metrics with the token', async () => {
    const response = await scrape({ authorization: `Bearer ${TOKEN}` });
    assert.equal(response.status, 200);
    assert.match(await response.text(), /http_request_duration_seconds_bucket/);
  });

  it('leaves the probes open', async () => {
    assert.equal((await scrape()).status, 401);
    const health = await fetch(`${server.url}/healthz`, { dispatcher: agent });
    assert.equal(health.status, 200);
    await health.body?.cancel();
    const ready = await fetch(`${server.url}/readyz`, { dispatcher: agent });
    assert.equal(ready.status, 200);
    await ready.body?.cancel();
  });
});
