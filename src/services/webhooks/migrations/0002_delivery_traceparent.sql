-- The traceparent of the event a delivery sends (null when tracing is off): its attempts are
-- spans of the request that caused the event.
alter table webhooks.delivery add column if not exists traceparent text;
