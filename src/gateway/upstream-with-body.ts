import { Agent, request as httpRequest, type IncomingHttpHeaders, type IncomingMessage } from 'node:http';
import type { Readable } from 'node:stream';

/**
 * A proxied request that has a body, sent with node:http rather than undici. undici writes a
 * request's headers only together with its first body byte, so a client that sends its
 * headers and waits for the answer before its body (a 413 from Content-Length, a 404 for
 * another user's file) would wait forever: the service never saw the request. node:http sends
 * the headers as soon as the connection is there.
 *
 * The body is drawn only once the connection is made: a connection that fails first leaves it
 * unread, so the caller may send it elsewhere.
 */
export interface UpstreamAnswer {
  statusCode: number;
  headers: IncomingHttpHeaders;
  body: IncomingMessage;
}

export interface BodyRequest {
  method: string;
  path: string;
  headers: Record<string, string | string[]>;
  body: Readable;
  signal: AbortSignal;
}

// The codes undici would give, so that the proxy reads both clients' failures alike.
const CONNECT_TIMEOUT_CODE = 'UND_ERR_CONNECT_TIMEOUT';
const CONNECT_TIMEOUT_MS = 2_000;
// A service silent for this long mid-request or mid-answer has failed.
const IDLE_TIMEOUT_MS = 300_000;

/** Keep-alive connections to one instance, for requests with a body. */
export function bodyAgent(): Agent {
  // An idle connection is dropped after 10 s, well before the service's own keep-alive
  // timeout, so a request never goes out on a connection the service is closing.
  return new Agent({ keepAlive: true, timeout: 10_000, scheduling: 'lifo' });
}

export function sendWithBody(agent: Agent, address: string, options: BodyRequest): Promise<UpstreamAnswer> {
  const url = new URL(address);
  return new Promise((resolve, reject) => {
    const req = httpRequest({
      agent,
      host: url.hostname,
      port: url.port,
      method: options.method,
      path: options.path,
      headers: options.headers,
      signal: options.signal,
    });
    let answered = false;
    req.once('response', (res) => {
      answered = true;
      if (!options.body.readableEnded) {
        // Answered before the whole body was sent (a refusal): the rest is no longer the
        // service's. The client's stream is left to the gateway's lingering close, and this
        // connection, its request cut short, ends with the answer.
        options.body.unpipe(req);
        options.body.destroy();
        res.once('end', () => req.destroy());
      }
      res.setTimeout(IDLE_TIMEOUT_MS, () => res.destroy(Object.assign(new Error('the service went silent mid-answer'), { code: 'UND_ERR_BODY_TIMEOUT' })));
      resolve({ statusCode: res.statusCode ?? 502, headers: res.headers, body: res });
    });
    req.on('error', (error) => {
      // After an answer (a refusal before the whole body was sent), the service closing the
      // connection on the rest of the body is expected: the answer is what counts.
      if (answered) return;
      options.body.destroy();
      reject(error);
    });
    // The client's body failing (the client went away mid-upload) fails the upstream request.
    options.body.once('error', (error) => req.destroy(error));
    req.once('socket', (socket) => {
      const start = () => {
        req.setTimeout(IDLE_TIMEOUT_MS, () => req.destroy(Object.assign(new Error('the service went silent'), { code: 'UND_ERR_HEADERS_TIMEOUT' })));
        options.body.pipe(req);
      };
      if (!socket.connecting) return start();
      const timer = setTimeout(() => req.destroy(Object.assign(new Error('connect timeout'), { code: CONNECT_TIMEOUT_CODE })), CONNECT_TIMEOUT_MS);
      socket.once('connect', () => {
        clearTimeout(timer);
        start();
      });
      socket.once('close', () => clearTimeout(timer));
    });
    // The headers leave now, not with the first body byte.
    req.flushHeaders();
  });
}
