import type { IncomingMessage } from 'node:http';
import type { FastifyInstance, FastifyRequest } from 'fastify';
import type { Bindings, ChildLoggerOptions, Logger } from 'pino';
import { type Context, contextOf, type Span, SpanKind, SpanStatusCode, type Tracer, trace, traceIdOf, tracerOf, tracingOn } from '../core/trace.ts';

declare module 'fastify' {
  interface FastifyRequest {
    /** The request's server span, as a context; null when tracing is off. */
    traceContext: Context | null;
  }
}

/**
 * W3C Trace Context on a Bantu HTTP server (the gateway, a service alone). With tracing on,
 * each request gets a server span, a child of the caller's `traceparent` when it sent one,
 * named by method and route (not the raw URL: bounded names) and ended with the status;
 * the route handlers then run in it (src/gateway/routes.ts), so that what they call and the
 * events they append carry it.
 *
 * The span starts where Fastify makes the request's logger (its first step for a request):
 * every line of the request, `incoming request` included, then carries `trace_id`. With
 * tracing off nothing is started, but a request that carries a `traceparent` still logs its
 * trace id, so that logs join the caller's traces.
 */
const STARTED = Symbol('bantu.traceContext');
const ROUTE = Symbol('bantu.tracedRoute');
type Traced = IncomingMessage & { [STARTED]?: Context; [ROUTE]?: string };

/** The route a request took when Fastify's is a catch-all (the distributed gateway's proxy). */
export function nameTracedRoute(request: FastifyRequest, route: string): void {
  if (request.traceContext) (request.raw as Traced)[ROUTE] = route;
}

export interface HttpTracing {
  /** Fastify's `childLoggerFactory`. */
  childLogger(logger: Logger, bindings: Bindings, options: ChildLoggerOptions, raw: IncomingMessage): Logger;
  /** Registers the hooks that hand the span to the request and end it. */
  register(app: FastifyInstance): void;
}

export function httpTracing(part: string): HttpTracing {
  if (!tracingOn()) {
    return {
      childLogger(logger, bindings, options, raw) {
        const traceId = traceIdOf(raw.headers.traceparent);
        return logger.child(traceId ? { ...bindings, trace_id: traceId } : bindings, options);
      },
      register(app) {
        app.decorateRequest('traceContext', null);
      },
    };
  }
  const tracer = tracerOf(part);
  return {
    childLogger(logger, bindings, options, raw) {
      const span = startServerSpan(tracer, raw);
      const { traceId, spanId } = span.spanContext();
      return logger.child({ ...bindings, trace_id: traceId, span_id: spanId }, options);
    },
    register(app) {
      app.decorateRequest('traceContext', null);
      app.addHook('onRequest', (request, _reply, done) => {
        request.traceContext = (request.raw as Traced)[STARTED] ?? null;
        done();
      });
      app.addHook('onResponse', (request, reply, done) => {
        const span = spanOf(request);
        if (span?.isRecording()) {
          const status = reply.statusCode;
          const route = (request.raw as Traced)[ROUTE] ?? request.routeOptions.url;
          if (route) {
            span.updateName(`${request.method} ${route}`);
            span.setAttribute('http.route', route);
          }
          span.setAttribute('http.response.status_code', status);
          if (status >= 500) span.setStatus({ code: SpanStatusCode.ERROR });
          span.end();
        }
        done();
      });
      app.addHook('onRequestAbort', (request, done) => {
        const span = spanOf(request);
        if (span?.isRecording()) {
          span.setStatus({ code: SpanStatusCode.ERROR, message: 'client aborted' });
          span.end();
        }
        done();
      });
    },
  };
}

function startServerSpan(tracer: Tracer, raw: Traced): Span {
  const parent = contextOf(raw.headers);
  const method = raw.method ?? 'GET';
  // The path only: a query can carry a download token.
  const path = (raw.url ?? '/').split('?', 1)[0] ?? '/';
  const span = tracer.startSpan(method, { kind: SpanKind.SERVER, attributes: { 'http.request.method': method, 'url.path': path, 'url.scheme': 'https' } }, parent);
  raw[STARTED] = trace.setSpan(parent, span);
  return span;
}

function spanOf(request: FastifyRequest): Span | undefined {
  return request.traceContext ? trace.getSpan(request.traceContext) : undefined;
}
