import { type Context, context, propagation, ROOT_CONTEXT, type Span, SpanKind, SpanStatusCode, type Tracer, trace } from '@opentelemetry/api';

/**
 * W3C Trace Context for the code that carries it (the HTTP servers, the bus, the consumers),
 * on the OpenTelemetry API alone. Until src/platform/tracing.ts registers an SDK (with
 * OTEL_EXPORTER_OTLP_ENDPOINT) the API is a no-op: `tracingOn()` is false, nothing here
 * allocates, and the callers skip their tracing work altogether.
 */
let on = false;

/** Set by the SDK's start and close (one process, one tracer provider). */
export function setTracingOn(value: boolean): void {
  on = value;
}

export function tracingOn(): boolean {
  return on;
}

/** The tracer of one part of Bantu: its instrumentation scope says which (`bantu/files`). */
export function tracerOf(part: string): Tracer {
  return trace.getTracer(`bantu/${part}`);
}

/** The `traceparent` of the active span, to carry in an event or a call; undefined when none. */
export function activeTraceparent(): string | undefined {
  if (!on) return undefined;
  const carrier: { traceparent?: string } = {};
  propagation.inject(context.active(), carrier);
  return carrier.traceparent;
}

/** The context a `traceparent` (and `tracestate`) names; the root context when absent or malformed. */
export function contextOf(carrier: Record<string, unknown>): Context {
  return propagation.extract(ROOT_CONTEXT, carrier);
}

/** Adds the active context's `traceparent` to outgoing headers (no-op when tracing is off). */
export function injectTraceparent(headers: Record<string, unknown>, from: Context = context.active()): void {
  if (on) propagation.inject(from, headers);
}

const TRACEPARENT = /^[0-9a-f]{2}-([0-9a-f]{32})-[0-9a-f]{16}-[0-9a-f]{2}$/;

/** The trace id a `traceparent` header names, for log lines when no SDK runs; undefined when malformed. */
export function traceIdOf(traceparent: unknown): string | undefined {
  if (typeof traceparent !== 'string') return undefined;
  const id = TRACEPARENT.exec(traceparent)?.[1];
  return id === undefined || /^0+$/.test(id) ? undefined : id;
}

/** Runs `work` in a span (a child of `parent`), ending it with the outcome; rethrows. */
export async function inSpan<T>(
  tracer: Tracer,
  name: string,
  options: { kind?: SpanKind; attributes?: Record<string, string | number | boolean>; parent?: Context },
  work: (span: Span) => Promise<T>,
): Promise<T> {
  const span = tracer.startSpan(name, { kind: options.kind ?? SpanKind.INTERNAL, attributes: options.attributes }, options.parent ?? context.active());
  try {
    return await context.with(trace.setSpan(options.parent ?? context.active(), span), () => work(span));
  } catch (error) {
    failSpan(span, error);
    throw error;
  } finally {
    span.end();
  }
}

export function failSpan(span: Span, error: unknown): void {
  span.recordException(error instanceof Error ? error : String(error));
  span.setStatus({ code: SpanStatusCode.ERROR, message: error instanceof Error ? error.message : String(error) });
}

export { type Context, context, type Span, SpanKind, SpanStatusCode, type Tracer, trace };
