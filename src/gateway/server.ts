import { randomUUID } from 'node:crypto';
import http, { type IncomingMessage } from 'node:http';
import type { Socket } from 'node:net';
import cors from '@fastify/cors';
import swagger from '@fastify/swagger';
import swaggerUi from '@fastify/swagger-ui';
import Fastify, { type FastifyInstance, LogController } from 'fastify';
import type { Logger } from 'pino';
import type { Registry } from 'prom-client';
import { Errors } from '../core/errors.ts';
import { type CredentialVerifier, registerAuthentication } from './auth.ts';
import { httpTracing } from './http-tracing.ts';
import { registerLingeringClose } from './linger.ts';
import { type ReadinessCheck, registerOperations } from './operations.ts';
import { problemOf, registerProblemHandlers } from './problem.ts';
import type { ServiceProxy } from './proxy.ts';
import { mountApiRoutes, type Route } from './routes.ts';
import { registerResponseHeaders } from './security-headers.ts';
import type { SocketProxy } from './socket-proxy.ts';
import type { TlsMaterial } from './tls.ts';
import { createValidatorCompiler } from './validation.ts';

export interface GatewayOptions {
  logger: Logger;
  /** Omitted in tests of the routes alone (`inject()`): then the server speaks plain HTTP. */
  tls?: TlsMaterial;
  corsOrigins: string[];
  maxUploadBytes: number;
  metrics: Registry;
  checks: Map<string, ReadinessCheck>;
  verifiers: CredentialVerifier[];
  /** The mounted services' route manifests (under `/v1`, or at the root when they say so). */
  routes: Route[];
  /** Distributed mode: every other path goes to the services' instances through the proxy. */
  proxy?: ServiceProxy;
  /** Distributed mode: Socket.IO (/socket.io/) goes to the notifications instances. */
  sockets?: SocketProxy;
  /** Distributed mode: the OpenAPI document to publish (the routes are the services'). */
  openapiDocument?: object;
  /** Distributed mode: live instances per service, shown by /readyz. */
  services?: () => Record<string, number>;
  /** BANTU_METRICS_TOKEN: /metrics then wants it. */
  metricsToken?: string;
  version: string;
}

const REQUEST_ID = /^[A-Za-z0-9._:-]{1,128}$/;

/**
 * What every Bantu HTTP server shares, the gateway and a service alone alike: request ids
 * (echoed when sane), trace context (`part` names the server in its spans), the 1 MiB JSON limit, validation, problem+json errors, the response
 * headers and the lingering close of early refusals.
 */
export function createHttpApp(options: { logger: Logger; tls?: TlsMaterial; trustProxy?: boolean; part?: string }): FastifyInstance {
  const tracing = httpTracing(options.part ?? 'gateway');
  const app = Fastify({
    loggerInstance: options.logger,
    // Each request's logger: where its trace starts, so that every line of it says trace_id.
    childLoggerFactory: tracing.childLogger as never,
    // A service behind the gateway: the client's address is the X-Forwarded-For the gateway set.
    trustProxy: options.trustProxy ?? false,
    ...(options.tls ? { https: { cert: options.tls.cert, key: options.tls.key } } : {}),
    // Echo a client's request id when it is sane; otherwise make one.
    requestIdHeader: false,
    // Log lines name it as the problem documents and the other log fields do.
    logController: new LogController({ requestIdLogLabel: 'request_id' }),
    genReqId: (request) => {
      const given = request.headers['x-request-id'];
      return typeof given === 'string' && REQUEST_ID.test(given) ? given : randomUUID();
    },
    bodyLimit: 1024 * 1024, // JSON bodies; uploads stream through their own limit
    return503OnClosing: true,
    ajv: { customOptions: { removeAdditional: false, coerceTypes: 'array', useDefaults: true, allErrors: true } },
  }) as unknown as FastifyInstance;
  app.setValidatorCompiler(createValidatorCompiler());

  tracing.register(app);
  registerProblemHandlers(app);
  registerResponseHeaders(app);
  registerLingeringClose(app);
  return app;
}

export async function createGateway(options: GatewayOptions): Promise<FastifyInstance> {
  const app = createHttpApp(options);
  await app.register(cors, {
    origin: options.corsOrigins.includes('*') ? true : options.corsOrigins,
    exposedHeaders: ['X-Request-Id', 'ETag', 'Content-Disposition', 'Content-Length', 'Retry-After', 'Location'],
    allowedHeaders: ['Authorization', 'Content-Type', 'Idempotency-Key', 'If-Match', 'If-None-Match', 'Range', 'X-Request-Id', 'traceparent', 'tracestate'],
    methods: ['GET', 'HEAD', 'POST', 'PUT', 'PATCH', 'DELETE'],
    maxAge: 600,
  });

  if (options.openapiDocument) {
    // Distributed: the routes live in the services; the document is the one generated from them (docs/openapi.json).
    await app.register(swagger, { mode: 'static', specification: { document: options.openapiDocument as never } });
  } else {
    await app.register(swagger, {
      // Shared schemas keep their $id as their name in components.schemas (`Problem`, not `def-0`).
      refResolver: { buildLocalReference: (json, _baseUri, _fragment, i) => String(json.$id ?? `def-${i}`) },
      openapi: {
        openapi: '3.1.0',
        info: {
          title: 'Bantu API',
          version: options.version,
          description:
            'Bantu: users, files with every version kept, real-time notifications, backups and exports, behind one HTTPS gateway. ' +
            'Errors are RFC 9457 problem+json with a stable `code`. Send a key as HTTP Basic user name (empty password) or as a Bearer token. ' +
            'A W3C `traceparent` header (with `tracestate`) joins the request, and the work its events cause, to your trace when the server exports traces (OpenTelemetry).',
        },
        servers: [{ url: '/' }],
        components: {
          securitySchemes: {
            basicKey: { type: 'http', scheme: 'basic', description: 'Account or application key as user name, empty password' },
            bearer: { type: 'http', scheme: 'bearer', description: 'Key, user access token (JWT) or operator token' },
          },
        },
      },
    });
  }
  await app.register(swaggerUi, { routePrefix: '/docs', staticCSP: true, uiConfig: { deepLinking: true } });

  registerAuthentication(app, options.verifiers);
  registerOperations(app, {
    metrics: options.metrics,
    checks: options.checks,
    services: options.services,
    certificate: options.tls?.cert,
    metricsToken: options.metricsToken,
  });
  app.get('/openapi.json', { schema: { hide: true } }, async () => app.swagger());

  await mountApiRoutes(app, options.routes);
  const proxy = options.proxy;
  if (proxy) {
    await app.register(async (scope) => {
      // Bodies stream to the service unread; the service parses, validates and limits them.
      scope.removeAllContentTypeParsers();
      scope.addContentTypeParser('*', (_request, _payload, done) => done(null));
      scope.route({ method: ['GET', 'POST', 'PUT', 'PATCH', 'DELETE'], url: '/*', schema: { hide: true }, handler: (request, reply) => proxy.handle(request, reply) });
      const sockets = options.sockets;
      if (sockets) scope.route({ method: ['GET', 'POST'], url: '/socket.io/*', schema: { hide: true }, handler: (request, reply) => sockets.handle(request, reply) });
    });
  }
  const sockets = options.sockets;
  if (sockets) {
    app.server.on('upgrade', (request: IncomingMessage, socket: Socket, head: Buffer) => {
      if (request.url?.startsWith('/socket.io/')) sockets.upgrade(request, socket, head);
      else socket.destroy();
    });
  }
  return app;
}

/**
 * The optional plain-HTTP port: every request gets 403 `https_required`. No redirect,
 * so a client that sent a key over plain HTTP learns its mistake instead of retrying it.
 */
export function createHttpRejector(logger: Logger): http.Server {
  const server = http.createServer((request, response) => {
    const requestId = randomUUID();
    const body = JSON.stringify(
      problemOf(Errors.httpsRequired, 'Use https:// on the HTTPS port. Nothing sent here is processed.', requestId),
    );
    logger.warn({ request_id: requestId, method: request.method, url: request.url }, 'plain HTTP request rejected');
    response.writeHead(403, {
      'content-type': 'application/problem+json; charset=utf-8',
      'content-length': Buffer.byteLength(body),
      'x-request-id': requestId,
      connection: 'close',
    });
    response.end(body);
    request.resume();
  });
  return server;
}
