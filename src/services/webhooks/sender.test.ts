import assert from 'node:assert/strict';
import http from 'node:http';
import type { AddressInfo, LookupFunction } from 'node:net';
import { after, before, describe, it } from 'node:test';
import { type Receiver, startReceiver } from '../../../test/helpers/webhook-receiver.ts';
import { NO_ALLOWED_NETWORKS, parseNetworks } from './domain/address-safety.ts';
import { WebhookSender } from './sender.ts';

/**
 * DNS rebinding: a name that resolved to a public address when it was registered resolves
 * to a loopback one at delivery. The sender checks the address it connects to (undici's
 * connect lookup hook), so nothing is sent. The resolver is a fake that answers 127.0.0.1
 * for every name: only loopback is ever reached.
 */
const toLoopback: LookupFunction = (_hostname, options, callback) => {
  if (options.all) (callback as unknown as (e: null, a: Array<{ address: string; family: number }>) => void)(null, [{ address: '127.0.0.1', family: 4 }]);
  else callback(null, '127.0.0.1', 4);
};

describe('webhook sender', () => {
  let receiver: Receiver;
  before(async () => {
    receiver = await startReceiver();
  });
  after(async () => receiver.close());

  it('a host that now resolves to loopback is not connected to', async () => {
    const port = new URL(receiver.url).port;
    const sender = new WebhookSender(NO_ALLOWED_NETWORKS, 2000, toLoopback);
    try {
      for (const url of [`https://rebound.example:${port}/hook`, `http://rebound.example:${port}/hook`, `https://127.0.0.1:${port}/hook`]) {
        const result = await sender.send(url, {}, '{}');
        assert.equal(result.ok, false, url);
        assert.equal(result.status, null);
        assert.match(String(result.error), /refused address 127\.0\.0\.1/, url);
      }
      assert.equal(receiver.received.length, 0);
    } finally {
      await sender.close();
    }
  });

  it('the same name inside an allowed network is sent; redirects are not followed', async () => {
    const port = new URL(receiver.url).port;
    const sender = new WebhookSender(parseNetworks('127.0.0.0/8'), 2000, toLoopback);
    try {
      const result = await sender.send(`http://rebound.example:${port}/hook`, { 'webhook-id': 'msg_1' }, '{"a":1}');
      assert.equal(result.ok, true, String(result.error));
      assert.equal(result.status, 200);
      assert.equal(receiver.received.length, 1);
      assert.equal(receiver.received[0]?.body, '{"a":1}');
      receiver.answer = () => 302;
      const redirected = await sender.send(`http://rebound.example:${port}/hook`, {}, '{}');
      assert.equal(redirected.ok, false);
      assert.equal(redirected.status, 302);
      assert.match(String(redirected.error), /redirect not followed/);
      assert.equal(receiver.received.length, 2);
    } finally {
      await sender.close();
    }
  });

  it('an answer that trickles in ends at the attempt deadline; a large one is read only in part', async () => {
    // Headers at once, then one byte every 100 ms: no single read waits long, the whole does.
    const trickling = http.createServer((_request, response) => {
      response.writeHead(200, { 'content-type': 'text/plain' });
      const timer = setInterval(() => response.write('.'), 100);
      response.on('close', () => clearInterval(timer));
    });
    const large = http.createServer((_request, response) => response.end('x'.repeat(1024 * 1024)));
    const listen = async (server: http.Server) => {
      await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
      return `http://127.0.0.1:${(server.address() as AddressInfo).port}/hook`;
    };
    const sender = new WebhookSender(parseNetworks('127.0.0.0/8'), 700);
    try {
      const slow = await sender.send(await listen(trickling), {}, '{}');
      assert.equal(slow.ok, false);
      assert.equal(slow.error, 'timed out after 700 ms');
      assert.ok(slow.durationMs >= 650, `ended after ${slow.durationMs} ms`);
      const big = await sender.send(await listen(large), {}, '{}');
      assert.equal(big.ok, true, String(big.error));
      assert.equal(big.status, 200);
    } finally {
      await sender.close();
      trickling.closeAllConnections();
      large.closeAllConnections();
      await Promise.all([trickling, large].map((server) => new Promise((resolve) => server.close(resolve))));
    }
  });
});
