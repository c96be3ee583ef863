import { randomUUID } from 'node:crypto';
import http, { type IncomingMessage } from 'node:http';
import type { Socket } from 'node:net';
import type { FastifyReply, FastifyRequest } from 'fastify';
import type { Logger } from 'pino';
import { AppError, Errors } from '../core/errors.ts';
import { INTERNAL_HEADER, type InternalTokens } from '../platform/internal-token.ts';
import type { ServiceInstance } from '../platform/registry.ts';
import { problemOf } from './problem.ts';
import { forwardedHeaders, type ServiceDirectory, type ServiceProxy } from './proxy.ts';

/**
 * Socket.IO through the gateway (distributed mode), to the notifications instances: HTTP
 * long-polling through the service proxy, WebSocket upgrades piped as raw sockets. Sticky by
 * session id: each instance makes ids that start with its own prefix (announced in the
 * registry), so every request of a session goes to the instance that holds it, with no table
 * here. A session whose instance is gone gets Engine.IO's "Session ID unknown" (400), on which
 * clients reconnect: to another instance, where `since` replays what they missed.
 */
export interface SocketProxyOptions {
  directory: ServiceDirectory;
  proxy: ServiceProxy;
  tokens: InternalTokens;
  logger: Logger;
}

const UNKNOWN_SESSION = JSON.stringify({ code: 1, message: 'Session ID unknown' });

export class SocketProxy {
  private next = 0;
  /** Open WebSocket pipes: closed with the gateway (an upgraded socket would hold its close forever). */
  private readonly open = new Set<Socket>();

  constructor(private readonly options: SocketProxyOptions) {}

  /** A polling request (GET or POST /socket.io/?...). */
  async handle(request: FastifyRequest, reply: FastifyReply): Promise<void> {
    const target = this.target(request.url);
    if (target === 'unknown-session') {
      return reply.code(400).type('application/json').send(UNKNOWN_SESSION);
    }
    if (!target) throw noInstance();
    await this.options.proxy.forwardTo(request, reply, target);
  }

  /** A WebSocket upgrade on the gateway's server. */
  upgrade(request: IncomingMessage, client: Socket, head: Buffer): void {
    client.on('error', () => client.destroy());
    const target = this.target(request.url ?? '/');
    if (target === 'unknown-session') {
      refuse(client, 400, 'Bad Request', UNKNOWN_SESSION, 'application/json');
      return;
    }
    if (!target) {
      const problem = JSON.stringify(problemOf(Errors.unavailable, 'No notifications instance is running', randomUUID()));
      refuse(client, 503, 'Service Unavailable', problem, 'application/problem+json', { 'retry-after': '1' });
      return;
    }
    const url = new URL(target.address);
    const headers = forwardedHeaders(request.headers, ['connection', 'upgrade']);
    headers.host = url.host;
    headers['x-forwarded-for'] = request.socket.remoteAddress ?? '';
    headers['x-forwarded-proto'] = 'https';
    headers[INTERNAL_HEADER] = this.options.tokens.sign({ principal: null, requestId: randomUUID(), method: 'GET', url: request.url ?? '/' });
    // URL keeps an IPv6 host's brackets; a socket address has none.
    const host = url.hostname.replace(/^\[(.*)\]$/, '$1');
    const upstreamRequest = http.request({ host, port: url.port, method: 'GET', path: request.url, headers });
    upstreamRequest.on('upgrade', (answer, upstream, upstreamHead) => {
      client.write(`HTTP/1.1 101 Switching Protocols\r\n${rawHeaders(answer)}\r\n`);
      if (upstreamHead.length > 0) client.write(upstreamHead);
      if (head.length > 0) upstream.write(head);
      upstream.on('error', () => client.destroy());
      client.on('close', () => upstream.destroy());
      upstream.on('close', () => client.destroy());
      this.open.add(client);
      client.once('close', () => this.open.delete(client));
      upstream.pipe(client);
      client.pipe(upstream);
    });
    // Refused (a bad origin, a bad request): the client gets the instance's answer as it is.
    upstreamRequest.on('response', (answer) => {
      client.write(`HTTP/1.1 ${answer.statusCode} ${answer.statusMessage}\r\n${rawHeaders(answer)}\r\n`);
      answer.pipe(client);
    });
    upstreamRequest.on('error', (error) => {
      if ((error as NodeJS.ErrnoException).code === 'ECONNREFUSED') this.options.directory.suspect(target.id);
      this.options.logger.warn({ err: error, instance: target.id }, 'socket proxy: connection to notifications failed');
      refuse(client, 502, 'Bad Gateway', JSON.stringify(problemOf(Errors.upstreamFailed, 'The notifications instance failed; reconnect', randomUUID())), 'application/problem+json');
    });
    upstreamRequest.end();
  }

  /** Ends every piped WebSocket: their clients reconnect, to another gateway. */
  close(): void {
    for (const socket of this.open) socket.destroy();
    this.open.clear();
  }

  /** The session's instance; for a new session, the next live instance in turn. */
  private target(url: string): ServiceInstance | 'unknown-session' | undefined {
    const instances = this.options.directory.instances('notifications');
    const sid = new URLSearchParams(url.split('?', 2)[1] ?? '').get('sid');
    if (sid) {
      const prefix = sid.split('.', 1)[0];
      return instances.find((instance) => instance.sessionPrefix === prefix) ?? 'unknown-session';
    }
    if (instances.length === 0) return undefined;
    this.next += 1;
    return instances[this.next % instances.length];
  }
}

function noInstance(): AppError {
  return new AppError(Errors.unavailable, 'No notifications instance is running; reconnect shortly', { headers: { 'Retry-After': '1' } });
}

function rawHeaders(message: IncomingMessage): string {
  let out = '';
  for (let i = 0; i < message.rawHeaders.length; i += 2) out += `${message.rawHeaders[i]}: ${message.rawHeaders[i + 1]}\r\n`;
  return out;
}

function refuse(client: Socket, status: number, reason: string, body: string, type: string, extra: Record<string, string> = {}): void {
  const headers = { 'content-type': type, 'content-length': String(Buffer.byteLength(body)), connection: 'close', ...extra };
  const lines = Object.entries(headers).map(([name, value]) => `${name}: ${value}\r\n`);
  client.end(`HTTP/1.1 ${status} ${reason}\r\n${lines.join('')}\r\n${body}`);
}
