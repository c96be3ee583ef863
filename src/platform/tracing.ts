import { randomUUID } from 'node:crypto';
import { propagation, trace } from '@opentelemetry/api';
import { W3CTraceContextPropagator } from '@opentelemetry/core';
import { OTLPTraceExporter } from '@opentelemetry/exporter-trace-otlp-http';
import { resourceFromAttributes } from '@opentelemetry/resources';
import { BasicTracerProvider, BatchSpanProcessor, ParentBasedSampler, TraceIdRatioBasedSampler } from '@opentelemetry/sdk-trace-base';
import type { Logger } from 'pino';
import type { TracingConfig } from '../core/config.ts';
import { setTracingOn, tracingOn } from '../core/trace.ts';

/**
 * The OpenTelemetry SDK of one process, when OTEL_EXPORTER_OTLP_ENDPOINT (or
 * OTEL_EXPORTER_OTLP_TRACES_ENDPOINT) is set: spans are batched and sent over OTLP/HTTP
 * (JSON). Without it nothing is registered, and src/core/trace.ts stays a no-op.
 *
 * The SDK is process-wide (the API's globals): the first platform of a process that asks for
 * it owns it until it closes; another platform in the same process (tests) shares it.
 */
export interface Tracing {
  /** Sends what is still batched, then unregisters the SDK. */
  close(): Promise<void>;
}

export function startTracing(config: TracingConfig | undefined, resource: { serviceName: string; version: string }, logger: Logger): Tracing {
  if (!config || tracingOn()) return { close: async () => undefined };
  const provider = new BasicTracerProvider({
    resource: resourceFromAttributes({
      'service.name': resource.serviceName,
      'service.version': resource.version,
      'service.instance.id': randomUUID(),
    }),
    // A caller's sampling decision (its traceparent's flag) stands; new traces keep the ratio.
    sampler: new ParentBasedSampler({ root: new TraceIdRatioBasedSampler(config.sampleRatio) }),
    spanProcessors: [new BatchSpanProcessor(new OTLPTraceExporter({ url: config.url, headers: config.headers }), { scheduledDelayMillis: 1000 })],
  });
  // No context manager: contexts are passed explicitly (src/core/trace.ts says why).
  propagation.setGlobalPropagator(new W3CTraceContextPropagator());
  trace.setGlobalTracerProvider(provider);
  setTracingOn(true);
  logger.info({ otlp_traces_url: config.url, sample_ratio: config.sampleRatio }, 'tracing on: spans go over OTLP/HTTP');
  return {
    async close() {
      setTracingOn(false);
      await provider.shutdown().catch((error: unknown) => logger.warn({ err: error }, 'tracing: the last spans could not be sent'));
      trace.disable();
      propagation.disable();
    },
  };
}
