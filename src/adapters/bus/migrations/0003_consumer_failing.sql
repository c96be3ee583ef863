-- While a consumer keeps failing on the event in hand (its store or database down), it says
-- so here, so that every process (the gateway's status and metrics) can show it; cleared
-- once the event passes. Best effort: written only while the database itself answers.
alter table bus.consumer_cursor
  add column if not exists failing_since    timestamptz,
  add column if not exists failing_attempts int not null default 0,
  add column if not exists failing_error    text;
