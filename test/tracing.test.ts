import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { Writable } from 'node:stream';
import { after, before, describe, it } from 'node:test';
import { startServer, type TestServer } from './helpers/server.ts';
import { distributed } from './helpers/shape.ts';
import { type Receiver, startReceiver } from './helpers/webhook-receiver.ts';

/**
 * Traces: a request that carries a W3C `traceparent` and uploads a file. The OTLP/HTTP
 * receiver here (a plain local HTTP server, as a collector would be) must get the spans of
 * the gateway, of the files service and of the consumers the upload's event reaches (backup,
 * notifications), all in the caller's trace; the request's log lines carry its trace id.
 * Runs in both shapes: in distributed mode each span comes from its own `bantu serve` process
 * and the files service has a server span of its own; in one process the gateway's span is
 * the files module's work too, and says so (`bantu.service`).
 */
interface ReceivedSpan {
  scope: string;
  service: string;
  traceId: string;
  spanId: string;
  parentSpanId: string;
  name: string;
  kind: number;
  attributes: Record<string, unknown>;
}

function otlpReceiver() {
  const spans: ReceivedSpan[] = [];
  const contentTypes = new Set<string>();
  const server = http.createServer((request, response) => {
    const chunks: Buffer[] = [];
    request.on('data', (chunk: Buffer) => chunks.push(chunk));
    request.on('end', () => {
      contentTypes.add(String(request.headers['content-type']));
      if (request.method === 'POST' && request.url === '/v1/traces') {
        const body = JSON.parse(Buffer.concat(chunks).toString('utf8'));
        for (const resourceSpans of body.resourceSpans ?? []) {
          const service = resourceSpans.resource?.attributes?.find((a: { key: string }) => a.key === 'service.name')?.value?.stringValue ?? '';
          for (const scopeSpans of resourceSpans.scopeSpans ?? []) {
            for (const span of scopeSpans.spans ?? []) {
              const attributes = Object.fromEntries(
                (span.attributes ?? []).map((a: { key: string; value: Record<string, unknown> }) => [a.key, Object.values(a.value)[0]]),
              );
              spans.push({ scope: scopeSpans.scope?.name ?? '', service, traceId: span.traceId, spanId: span.spanId, parentSpanId: span.parentSpanId ?? '', name: span.name, kind: span.kind, attributes });
            }
          }
        }
      }
      response.writeHead(200, { 'content-type': 'application/json' }).end('{}');
    });
  });
  return { server, spans, contentTypes };
}

async function until<T>(what: string, read: () => T | undefined, timeoutMs = 30_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = read();
    if (value !== undefined) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
}

describe('traces over OTLP/HTTP', () => {
  const receiver = otlpReceiver();
  const lines: string[] = [];
  const sink = new Writable({
    write(chunk, _encoding, done) {
      lines.push(...String(chunk).split('\n').filter(Boolean));
      done();
    },
  });
  let server: TestServer;
  let crm: Receiver;

  before(async () => {
    await new Promise<void>((resolve) => receiver.server.listen(0, '127.0.0.1', resolve));
    const { port } = receiver.server.address() as AddressInfo;
    server = await startServer(
      { OTEL_EXPORTER_OTLP_ENDPOINT: `http://127.0.0.1:${port}`, BANTU_LOG_LEVEL: 'info', BANTU_WEBHOOK_ALLOWED_NETWORKS: '127.0.0.0/8' },
      { logDestination: sink },
    );
    crm = await startReceiver();
    const hook = await server.request('POST', '/v1/webhooks', { auth: server.keys.test.account_key, json: { url: crm.url } });
    assert.equal(hook.status, 201, hook.text);
  });
  after(async () => {
    await server?.close();
    await crm?.close();
    receiver.server.close();
  });

  it('an upload with a traceparent: gateway, files, backup, notifications and webhook spans in its trace; its log lines carry the trace id', async () => {
    const traceId = randomBytes(16).toString('hex');
    const callerSpanId = randomBytes(8).toString('hex');
    const created = await server.request('POST', '/v1/files?name=traced.txt', {
      auth: server.keys.test.account_key,
      headers: { 'content-type': 'text/plain', traceparent: `00-${traceId}-${callerSpanId}-01` },
      body: 'traced content',
    });
    assert.equal(created.status, 201, created.text);

    const inTrace = () => receiver.spans.filter((span) => span.traceId === traceId);
    const scopes = ['bantu/gateway', 'bantu/backup', 'bantu/notifications', 'bantu/webhooks', ...(distributed ? ['bantu/files'] : [])];
    const spans = await until(`spans of ${scopes.join(', ')} and the webhook's delivery`, () => {
      const found = inTrace();
      const delivered = found.some((span) => span.scope === 'bantu/webhooks' && span.kind === 3);
      return delivered && scopes.every((scope) => found.some((span) => span.scope === scope)) ? found : undefined;
    });

    // The gateway's server span is the caller's child, and every other span descends from it.
    const gateway = spans.find((span) => span.scope === 'bantu/gateway' && span.parentSpanId === callerSpanId);
    assert.ok(gateway, JSON.stringify(spans, null, 2));
    assert.equal(gateway.name, 'POST /v1/files');
    assert.equal(gateway.kind, 2, 'SERVER');
    assert.equal(gateway.attributes['http.response.status_code'], 201);
    if (distributed) {
      const files = spans.find((span) => span.scope === 'bantu/files');
      assert.equal(files?.service, 'bantu-files');
      assert.equal(files?.parentSpanId, gateway.spanId, 'the files process continues the gateway span');
      assert.equal(files?.kind, 2, 'SERVER');
      assert.equal(files?.name, 'POST /v1/files');
    } else {
      assert.equal(gateway.attributes['bantu.service'], 'files', 'the embedded gateway span names the module that served it');
    }
    const byId = new Map(spans.map((span) => [span.spanId, span]));
    for (const span of spans) {
      let at: ReceivedSpan | undefined = span;
      while (at && at !== gateway) at = byId.get(at.parentSpanId);
      assert.equal(at, gateway, `${span.scope} ${span.name} descends from the gateway's span`);
    }
    const backup = spans.find((span) => span.scope === 'bantu/backup');
    assert.equal(backup?.kind, 5, 'the backup copy is a CONSUMER span');
    assert.match(backup?.name ?? '', /File_create/);
    // The webhook: the consumer queued it (CONSUMER), the worker sent it (CLIENT), and the CRM got the trace.
    const sent = spans.find((span) => span.scope === 'bantu/webhooks' && span.kind === 3);
    assert.equal(sent?.name, 'webhook File_create');
    assert.equal(sent?.attributes['http.response.status_code'], 200);
    const delivery = crm.received.find((entry) => String(entry.headers.traceparent).includes(traceId));
    assert.ok(delivery, 'the endpoint received the traceparent');
    assert.equal(String(delivery.headers.traceparent).split('-')[2], sent?.spanId, "the endpoint's parent is the delivery span");
    // OTLP/JSON, as the collectors' receivers expect it.
    assert.ok([...receiver.contentTypes].every((type) => type.startsWith('application/json')), [...receiver.contentTypes].join());

    // The request's own log lines (on every process it crossed) carry the trace id.
    const requestId = String(created.headers['x-request-id']);
    const records = lines.flatMap((line) => (line.startsWith('{') ? [JSON.parse(line)] : []));
    const ofRequest = records.filter((record) => record.request_id === requestId);
    assert.ok(ofRequest.some((record) => record.msg === 'request completed'), lines.slice(-20).join('\n'));
    for (const record of ofRequest) assert.equal(record.trace_id, traceId, JSON.stringify(record));
  });

  it('a request without traceparent starts a trace of its own; the response is the same', async () => {
    const before = new Set(receiver.spans.map((span) => span.traceId));
    const listed = await server.request('GET', '/v1/files', { auth: server.keys.test.account_key });
    assert.equal(listed.status, 200, listed.text);
    const root = await until('a new root span', () =>
      receiver.spans.find((span) => span.scope === 'bantu/gateway' && span.name === 'GET /v1/files' && !before.has(span.traceId) && span.parentSpanId === ''),
    );
    assert.match(root.traceId, /^[0-9a-f]{32}$/);
  });
});
