-- The W3C traceparent of the work that appended the event (null when tracing is off): its
-- consumers' spans join the trace of the request that caused it.
alter table bus.outbox add column if not exists traceparent text;
