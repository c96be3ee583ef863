-- The worker's claim reads each endpoint's due deliveries, soonest first, from here: it finds
-- which endpoints have work in `delivery_due`, then takes a bounded run of each one's own.
create index if not exists delivery_endpoint_due on webhooks.delivery (endpoint_id, next_attempt_at) where status = 'pending';
