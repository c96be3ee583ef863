import type { BusEvent } from '../core/events.ts';
import type { BatchEventHandler, EventHandler } from '../core/ports.ts';
import { contextOf, failSpan, inSpan, type Span, SpanKind, tracerOf, tracingOn } from '../core/trace.ts';

/**
 * A bus consumer's work joins the trace of the request that appended the event (its
 * `traceparent`): one consumer span per event, a child of the appender's span. Events
 * appended outside any traced work carry none and get no span. With tracing off the handlers
 * are returned as they are.
 */
export function tracedHandler(module: string, consumer: string, handle: EventHandler): EventHandler {
  if (!tracingOn()) return handle;
  const tracer = tracerOf(module);
  return (event) => {
    if (!event.traceparent) return handle(event);
    return inSpan(tracer, `${consumer} ${event.type}`, { kind: SpanKind.CONSUMER, parent: contextOf({ traceparent: event.traceparent }), attributes: attributesOf(consumer, event) }, () => handle(event));
  };
}

/** A batch: each traced event's span covers the batch's work (they are done together). */
export function tracedBatchHandler(module: string, consumer: string, handle: BatchEventHandler): BatchEventHandler {
  if (!tracingOn()) return handle;
  const tracer = tracerOf(module);
  return async (events) => {
    const spans: Span[] = [];
    for (const event of events) {
      if (event.traceparent) {
        spans.push(tracer.startSpan(`${consumer} ${event.type}`, { kind: SpanKind.CONSUMER, attributes: { ...attributesOf(consumer, event), 'messaging.batch.message_count': events.length } }, contextOf({ traceparent: event.traceparent })));
      }
    }
    try {
      await handle(events);
    } catch (error) {
      for (const span of spans) failSpan(span, error);
      throw error;
    } finally {
      for (const span of spans) span.end();
    }
  };
}

function attributesOf(consumer: string, event: BusEvent): Record<string, string> {
  return { 'messaging.consumer.group.name': consumer, 'messaging.message.id': event.event_id, 'bantu.tenant_id': event.tenant_id, 'bantu.environment': event.environment };
}
