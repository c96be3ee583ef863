import { type Context, propagation, ROOT_CONTEXT, type Span, SpanKind, SpanStatusCode, type Tracer, trace } from '@opentelemetry/api';

/**
 * W3C Trace Context for the code that carries it (the HTTP servers, the bus, the consumers),
 * on the OpenTelemetry API alone. Until src/platform/tracing.ts registers an SDK (with
 * OTEL_EXPORTER_OTLP_ENDPOINT) the API is a no-op: `tracingOn()` is false, nothing here
 * allocates, and the callers skip their tracing work altogether.
 *
 * The context is passed explicitly, never looked up as "the active one": there is no context
 * manager. On Node 20 the only one that follows async work is AsyncLocalStorage, whose promise
 * hooks cost every promise of the process: with it, a traced request cost 0.694 ms of CPU
 * against 0.512 untraced (bench gateway/tracing-on, CPU-bound ratio 0.74); without it, 0.572
 * against 0.558 (0.976), spans and export unchanged. A request's context rides on its
 * principal instead (`bindTrace`), which every domain call and service call already takes.
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

/** The trace context each request's principal acts in (a per-request copy: verifiers cache principals). */
const traces = new WeakMap<object, Context>();

/** A copy of `principal` that carries `context`: what the request does in its name joins that trace. */
export function bindTrace<T extends object>(principal: T, context: Context): T {
  const bound = { ...principal };
  traces.set(bound, context);
  return bound;
}

/** The trace context a principal carries (see bindTrace); undefined when none. */
export function traceOf(principal: object | null | undefined): Context | undefined {
  return on && principal ? traces.get(principal) : undefined;
}

/** The `traceparent` of a context, to carry in an event; undefined when none. */
export function traceparentOf(from: Context | undefined): string | undefined {
  if (!on || !from) return undefined;
  const carrier: { traceparent?: string } = {};
  propagation.inject(from, carrier);
  return carrier.traceparent;
}

/** The context a `traceparent` (and `tracestate`) names; the root context when absent or malformed. */
export function contextOf(carrier: Record<string, unknown>): Context {
  return propagation.extract(ROOT_CONTEXT, carrier);
}

/** Adds the context's `traceparent` to outgoing headers (no-op when tracing is off or there is none). */
export function injectTraceparent(headers: Record<string, unknown>, from: Context | undefined): void {
  if (on && from) propagation.inject(from, headers);
}

const TRACEPARENT = /^[0-9a-f]{2}-([0-9a-f]{32})-[0-9a-f]{16}-[0-9a-f]{2}$/;

/** The trace id a `traceparent` header names, for log lines when no SDK runs; undefined when malformed. */
export function traceIdOf(traceparent: unknown): string | undefined {
  if (typeof traceparent !== 'string') return undefined;
  const id = TRACEPARENT.exec(traceparent)?.[1];
  return id === undefined || /^0+$/.test(id) ? undefined : id;
}

/** Runs `work` in a span (a child of `parent`), ending it with the outcome; rethrows. `work` gets the span's context, to pass on. */
export async function inSpan<T>(
  tracer: Tracer,
  name: string,
  options: { kind?: SpanKind; attributes?: Record<string, string | number | boolean>; parent?: Context },
  work: (span: Span, context: Context) => Promise<T>,
): Promise<T> {
  const parent = options.parent ?? ROOT_CONTEXT;
  const span = tracer.startSpan(name, { kind: options.kind ?? SpanKind.INTERNAL, attributes: options.attributes }, parent);
  try {
    return await work(span, trace.setSpan(parent, span));
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

export { type Context, type Span, SpanKind, SpanStatusCode, type Tracer, trace };
