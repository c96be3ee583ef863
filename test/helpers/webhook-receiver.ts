import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { Webhook } from 'standardwebhooks';

/**
 * A webhook receiver for tests: a real HTTP server on 127.0.0.1 that records every request
 * and answers as `answer` says (a status, a status after a delay, or 'hang': never answer).
 */
export interface ReceivedRequest {
  headers: http.IncomingHttpHeaders;
  body: string;
  at: number;
}

export interface Receiver {
  url: string;
  received: ReceivedRequest[];
  /** Decides the answer to the n-th request (0-based). */
  answer: (n: number, request: ReceivedRequest) => number | { status: number; afterMs: number } | 'hang';
  /** The bodies verified with the standardwebhooks library against `secret`; throws on a bad signature. */
  verified(secret: string): Array<{ id: string; type: string; data: { file: { id: string; name: string } } }>;
  close(): Promise<void>;
}

export async function startReceiver(answer: Receiver['answer'] = () => 200): Promise<Receiver> {
  const received: ReceivedRequest[] = [];
  const hanging = new Set<http.ServerResponse>();
  const receiver: Receiver = {
    url: '',
    received,
    answer,
    verified(secret) {
      const verifier = new Webhook(secret);
      return received.map((r) => verifier.verify(r.body, r.headers as Record<string, string>) as ReturnType<Receiver['verified']>[number]);
    },
    async close() {
      for (const response of hanging) response.destroy();
      server.closeAllConnections();
      await new Promise((resolve) => server.close(resolve));
    },
  };
  const server = http.createServer((request, response) => {
    const chunks: Buffer[] = [];
    request.on('data', (chunk) => chunks.push(chunk));
    request.on('end', () => {
      const entry = { headers: request.headers, body: Buffer.concat(chunks).toString('utf8'), at: Date.now() };
      const n = received.length;
      received.push(entry);
      const decision = receiver.answer(n, entry);
      if (decision === 'hang') {
        hanging.add(response);
        return;
      }
      if (typeof decision === 'number') response.writeHead(decision, { 'content-type': 'text/plain' }).end('ok');
      else setTimeout(() => response.writeHead(decision.status, { 'content-type': 'text/plain' }).end('ok'), decision.afterMs);
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  receiver.url = `http://127.0.0.1:${(server.address() as AddressInfo).port}/hook`;
  return receiver;
}
