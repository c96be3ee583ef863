import type { Agent, IncomingHttpHeaders, IncomingMessage } from 'node:http';
import { Readable } from 'node:stream';
import type { FastifyReply, FastifyRequest } from 'fastify';
import FindMyWay from 'find-my-way';
import type { Logger } from 'pino';
import { Pool } from 'undici';
import { AppError, Errors } from '../core/errors.ts';
import type { Principal } from '../core/principal.ts';
import type { CredentialVerifier } from '../core/service-ports.ts';
import { injectTraceparent } from '../core/trace.ts';
import type { ServiceName } from '../platform/catalogue.ts';
import { INTERNAL_HEADER, type InternalTokens } from '../platform/internal-token.ts';
import type { ServiceInstance } from '../platform/registry.ts';
import { enforceRule, verifyCredential } from './auth.ts';
import { nameTracedRoute } from './http-tracing.ts';
import { logWithPrincipal } from './log-context.ts';
import type { RouteDescription } from './routes.ts';
import { bodyAgent, sendWithBody, type UpstreamAnswer } from './upstream-with-body.ts';

/**
 * The gateway of distributed mode: finds the route a request is for among the routes the
 * services announced, authenticates it once, and streams it to a live instance of that
 * service with the verified principal in a signed header. Bodies stream both ways (keep-alive
 * connections per instance: undici for requests without a body, node:http for those with one,
 * see upstream-with-body.ts): nothing is buffered.
 *
 * A connection failure before any answer byte is retried once on another instance, only for
 * GET and HEAD and for writes carrying an Idempotency-Key whose body was not yet read.
 */
export interface ServiceDirectory {
  instances(service: ServiceName): ServiceInstance[];
  routes(): ReadonlyMap<ServiceName, RouteDescription[]>;
  unseen(): ServiceName[];
  suspect(instanceId: string): void;
  onChange(listener: () => void): void;
}

export interface ProxyOptions {
  directory: ServiceDirectory;
  tokens: InternalTokens;
  verifiers: CredentialVerifier[];
  logger: Logger;
}

interface Target {
  service: ServiceName;
  route: RouteDescription;
  /** As routed (`/v1/files/:id`): the span's name says it, not the catch-all. */
  path: string;
}

// Hop-by-hop headers (RFC 9110 7.6.1) and what the gateway replaces; everything else passes.
// `expect`: Node has already answered the client's 100-continue itself.
const DROPPED_REQUEST_HEADERS = new Set(['expect', 'connection', 'keep-alive', 'proxy-connection', 'te', 'trailer', 'transfer-encoding', 'upgrade', 'host', 'authorization', INTERNAL_HEADER, 'x-forwarded-for', 'x-forwarded-host', 'x-forwarded-proto']);
const DROPPED_RESPONSE_HEADERS = new Set(['connection', 'keep-alive', 'proxy-connection', 'te', 'trailer', 'transfer-encoding', 'upgrade']);
// A connection that could not be made: the request never left the gateway (a vanished or stopping instance).
const CONNECT_ERRORS = new Set(['ECONNREFUSED', 'EHOSTUNREACH', 'ENETUNREACH', 'ENOTFOUND', 'EAI_AGAIN', 'UND_ERR_CONNECT_TIMEOUT']);
// A connection lost after it was made: the instance may have started on the request.
const LOST_CONNECTION_ERRORS = new Set(['ECONNRESET', 'EPIPE', 'UND_ERR_SOCKET', 'UND_ERR_CLOSED']);
// How long a service may take to start answering once it has the whole request.
const ANSWER_TIMEOUT_MS = 60_000;

export class ServiceProxy {
  private router = FindMyWay<FindMyWay.HTTPVersion.V1>();
  private readonly pools = new Map<string, Pool>();
  private readonly agents = new Map<string, Agent>();
  private readonly next = new Map<ServiceName, number>();

  constructor(private readonly options: ProxyOptions) {
    this.rebuild();
    options.directory.onChange(() => this.rebuild());
  }

  async handle(request: FastifyRequest, reply: FastifyReply): Promise<void> {
    const path = request.url.split('?', 1)[0] ?? '/';
    const found = this.router.find(request.method as FindMyWay.HTTPMethod, path);
    if (!found) {
      const unseen = this.options.directory.unseen();
      if (unseen.length > 0) throw unavailable(`No instance of ${unseen.join(', ')} has been seen yet; try again shortly`);
      throw new AppError(Errors.notFound, `No route ${request.method} ${path}`);
    }
    const target = found.store as Target;
    nameTracedRoute(request, target.path);
    let principal: Principal | null = null;
    if (target.route.auth && !(target.route.credentialsOptional && request.headers.authorization === undefined)) {
      principal = await verifyCredential(this.options.verifiers, request.headers.authorization);
      logWithPrincipal(request, principal);
      enforceRule(principal, { ...target.route, auth: target.route.auth });
    }
    await this.forward(request, reply, target.service, principal);
  }

  /** Streams a request to this instance (Socket.IO polling: the instance is chosen by session). */
  async forwardTo(request: FastifyRequest, reply: FastifyReply, instance: ServiceInstance): Promise<void> {
    try {
      await this.send(request, reply, instance, null);
    } catch (error) {
      if (!(error instanceof ConnectionFailed)) throw error;
      if (error.neverConnected) this.options.directory.suspect(instance.id);
      throw new AppError(Errors.upstreamFailed, `The ${instance.service} instance failed; try again`);
    }
  }

  async close(): Promise<void> {
    await Promise.all([...this.pools.values()].map((pool) => pool.close()));
    this.pools.clear();
    for (const agent of this.agents.values()) agent.destroy();
    this.agents.clear();
  }

  private async forward(request: FastifyRequest, reply: FastifyReply, service: ServiceName, principal: Principal | null): Promise<void> {
    const retriable = request.method === 'GET' || request.method === 'HEAD' || request.headers['idempotency-key'] !== undefined;
    const tried = new Set<string>();
    for (;;) {
      const instance = this.pick(service, tried);
      if (!instance) {
        throw unavailable(tried.size === 0 ? `No instance of ${service} is running` : `The ${service} instance failed; try again`);
      }
      tried.add(instance.id);
      try {
        await this.send(request, reply, instance, principal);
        return;
      } catch (error) {
        if (!(error instanceof ConnectionFailed)) throw error;
        this.options.logger.warn({ err: error.cause, upstream: service, instance: instance.id, request_id: request.id }, 'proxy: the instance failed before answering');
        // Never connected: nothing reached it, so any request may go elsewhere, and the
        // instance is gone. Connected, then lost: only what may be sent twice is sent again.
        if (error.neverConnected) this.options.directory.suspect(instance.id);
        const again = error.neverConnected || (retriable && !error.bodyStarted);
        if (!(again && tried.size < 2)) {
          throw new AppError(Errors.upstreamFailed, `The ${service} service failed before answering; the request may not have been applied`);
        }
      }
    }
  }

  private async send(request: FastifyRequest, reply: FastifyReply, instance: ServiceInstance, principal: Principal | null): Promise<void> {
    const headers = forwardedHeaders(request.headers);
    headers['x-request-id'] = request.id;
    headers['x-forwarded-for'] = request.ip;
    headers['x-forwarded-proto'] = 'https';
    if (request.headers.host) headers['x-forwarded-host'] = request.headers.host;
    headers[INTERNAL_HEADER] = this.options.tokens.sign({ principal, requestId: request.id, method: request.method, url: request.url });
    // The service's server span is a child of this request's (the client's own traceparent when tracing is off).
    if (request.traceContext) injectTraceparent(headers, request.traceContext);

    const hasBody = request.method !== 'GET' && request.method !== 'HEAD' && hasRequestBody(request.headers);
    const abort = new AbortController();
    // The response closing before it was finished means the client went away: stop the upstream request too.
    let clientGone = false;
    const onClientGone = () => {
      if (reply.raw.writableFinished) return;
      clientGone = true;
      abort.abort();
    };
    reply.raw.once('close', onClientGone);
    // The answer timeout starts once the whole request is sent: an upload may take its time.
    let answerTimer: NodeJS.Timeout | undefined;
    let timedOut = false;
    const startAnswerTimer = () => {
      answerTimer = setTimeout(() => {
        timedOut = true;
        abort.abort();
      }, ANSWER_TIMEOUT_MS);
    };
    if (hasBody) request.raw.once('end', startAnswerTimer);
    else startAnswerTimer();

    const body = hasBody ? lazyBody(request.raw) : undefined;
    let answer: Pick<UpstreamAnswer, 'statusCode' | 'headers'> & { body: Readable };
    try {
      answer = body
        ? await sendWithBody(this.agent(instance.address), instance.address, { method: request.method, path: request.url, headers, body: body.stream, signal: abort.signal })
        : await this.pool(instance.address).request({ method: request.method as 'GET', path: request.url, headers, signal: abort.signal, headersTimeout: 0 });
    } catch (error) {
      clearTimeout(answerTimer);
      reply.raw.off('close', onClientGone);
      request.raw.off('end', startAnswerTimer);
      if (clientGone) throw error; // nobody is left to answer
      if (timedOut) throw new AppError(Errors.upstreamTimeout, `The ${instance.service} service did not answer within ${ANSWER_TIMEOUT_MS / 1000} s`);
      const code = (error as NodeJS.ErrnoException).code ?? '';
      if (CONNECT_ERRORS.has(code) || LOST_CONNECTION_ERRORS.has(code)) throw new ConnectionFailed(error, CONNECT_ERRORS.has(code), body?.started() ?? false);
      throw error;
    }
    clearTimeout(answerTimer);
    request.raw.off('end', startAnswerTimer);
    reply.code(answer.statusCode);
    for (const [name, value] of Object.entries(answer.headers)) {
      if (value !== undefined && !DROPPED_RESPONSE_HEADERS.has(name)) reply.header(name, value);
    }
    if (request.method === 'HEAD') {
      answer.body.resume();
      return reply.send();
    }
    return reply.send(answer.body);
  }

  /** Round robin over the live instances not tried yet. */
  private pick(service: ServiceName, tried: Set<string>): ServiceInstance | undefined {
    const candidates = this.options.directory.instances(service).filter((i) => !tried.has(i.id));
    if (candidates.length === 0) return undefined;
    const n = (this.next.get(service) ?? 0) + 1;
    this.next.set(service, n);
    return candidates[n % candidates.length];
  }

  private pool(address: string): Pool {
    let pool = this.pools.get(address);
    if (!pool) {
      // No cap on connections: Socket.IO long polls hold one each for up to half a minute.
      pool = new Pool(address, { connections: null, keepAliveTimeout: 10_000, headersTimeout: 0, bodyTimeout: 300_000, connect: { timeout: 2_000 } });
      this.pools.set(address, pool);
    }
    return pool;
  }

  private agent(address: string): Agent {
    let agent = this.agents.get(address);
    if (!agent) {
      agent = bodyAgent();
      this.agents.set(address, agent);
    }
    return agent;
  }

  /** New routes or instances: a fresh route table, and no pools left to instances that are gone. */
  private rebuild(): void {
    const router = FindMyWay<FindMyWay.HTTPVersion.V1>();
    for (const [service, routes] of this.options.directory.routes()) {
      for (const route of routes) {
        const path = route.at === 'root' ? route.url : `/v1${route.url}`;
        const target: Target = { service, route, path };
        try {
          router.on(route.method, path, () => undefined, target);
          if (route.method === 'GET') router.on('HEAD', path, () => undefined, target);
        } catch (error) {
          // Two services announce one route (an upgrade moving it): the first keeps it.
          this.options.logger.error({ err: error, upstream: service, method: route.method, path }, 'proxy: a route announced twice; ignored');
        }
      }
    }
    this.router = router;
    const live = new Set<string>();
    for (const service of this.options.directory.routes().keys()) for (const i of this.options.directory.instances(service)) live.add(i.address);
    for (const [address, pool] of this.pools) {
      if (!live.has(address)) {
        this.pools.delete(address);
        pool.close().catch(() => undefined);
      }
    }
    for (const [address, agent] of this.agents) {
      if (!live.has(address)) {
        this.agents.delete(address);
        // Idle connections only: an upload still in flight finishes.
        for (const sockets of Object.values(agent.freeSockets)) for (const socket of sockets ?? []) socket.destroy();
      }
    }
  }
}

class ConnectionFailed extends Error {
  constructor(
    cause: unknown,
    /** The connection could not be made: the instance received nothing. */
    readonly neverConnected: boolean,
    /** Some of the request body was already sent: it cannot be sent again. */
    readonly bodyStarted: boolean,
  ) {
    super('connection to the service failed', { cause });
  }
}

/**
 * The request body as undici reads it, drawn from the client's stream only once undici asks
 * (after it has connected). A connection that fails first leaves the client's stream unread
 * and usable for a retry; undici destroys only this wrapper.
 */
function lazyBody(source: IncomingMessage): { stream: Readable; started(): boolean } {
  let started = false;
  const onData = (chunk: Buffer) => {
    if (!stream.push(chunk)) source.pause();
  };
  const onEnd = () => stream.push(null);
  const onError = (error: Error) => stream.destroy(error);
  const stream = new Readable({
    read() {
      if (!started) {
        started = true;
        source.on('data', onData);
        source.once('end', onEnd);
        source.once('error', onError);
      }
      source.resume();
    },
    destroy(error, callback) {
      source.off('data', onData);
      source.off('end', onEnd);
      source.off('error', onError);
      // The client's stream is left behind: its later failure (the client going away, seen
      // through the reply's close) must not go unhandled.
      source.on('error', ignore);
      callback(error);
    },
  });
  return { stream, started: () => started };
}

function ignore(): void {}

function unavailable(detail: string): AppError {
  return new AppError(Errors.unavailable, detail, { headers: { 'Retry-After': '1' } });
}

/** The client's headers a service may see: no hop-by-hop ones (those named in `Connection` too), none the gateway sets itself. */
export function forwardedHeaders(incoming: IncomingHttpHeaders, keep: readonly string[] = []): Record<string, string | string[]> {
  const named = String(incoming.connection ?? '')
    .split(',')
    .map((name) => name.trim().toLowerCase())
    .filter(Boolean);
  const out: Record<string, string | string[]> = {};
  for (const [name, value] of Object.entries(incoming)) {
    if (value === undefined) continue;
    if (keep.includes(name) || !(DROPPED_REQUEST_HEADERS.has(name) || named.includes(name))) out[name] = value;
  }
  return out;
}

function hasRequestBody(headers: IncomingHttpHeaders): boolean {
  return headers['transfer-encoding'] !== undefined || (headers['content-length'] !== undefined && headers['content-length'] !== '0');
}
