-- The webhooks service's own tables, in each environment database.
create schema if not exists webhooks;

-- One row per registered endpoint. Secrets are sealed with the installation's secret box:
-- `secret` signs; `previous_secret` signs beside it until `previous_expires_at` (a rotation's overlap).
create table if not exists webhooks.endpoint (
  tenant_id           text not null,
  id                  text primary key,
  url                 text not null,
  events              text[] not null,
  description         text,
  status              text not null check (status in ('enabled', 'disabled')),
  secret              bytea not null,
  previous_secret     bytea,
  previous_expires_at timestamptz,
  created_at          timestamptz not null default now(),
  updated_at          timestamptz not null default now()
);
create index if not exists endpoint_tenant on webhooks.endpoint (tenant_id, id desc);

-- One row per event and endpoint: the consumer writes it (idempotent on the pair), the
-- delivery worker sends it on its own schedule, so a failing endpoint never holds the consumer.
create table if not exists webhooks.delivery (
  tenant_id       text not null,
  id              text primary key,
  endpoint_id     text not null references webhooks.endpoint (id) on delete cascade,
  event_id        text not null,
  type            text not null,
  payload         text not null,
  attempt         int not null default 0,
  status          text not null check (status in ('pending', 'succeeded', 'failed')),
  response_status int,
  error           text,
  duration_ms     int,
  created_at      timestamptz not null default now(),
  -- When the first attempt failed: retries stop 3 days after it.
  first_failed_at timestamptz,
  next_attempt_at timestamptz,
  unique (endpoint_id, event_id)
);
create index if not exists delivery_endpoint on webhooks.delivery (endpoint_id, id desc);
-- The worker's queue: what is due, soonest first.
create index if not exists delivery_due on webhooks.delivery (next_attempt_at) where status = 'pending';

do $$
declare t text;
begin
  foreach t in array array['endpoint', 'delivery'] loop
    execute format('alter table webhooks.%I enable row level security', t);
    execute format('drop policy if exists tenant_isolation on webhooks.%I', t);
    execute format($p$create policy tenant_isolation on webhooks.%I
      using (tenant_id = current_setting('bantu.tenant_id', true))
      with check (tenant_id = current_setting('bantu.tenant_id', true))$p$, t);
  end loop;
end $$;

grant usage on schema webhooks to bantu_app;
grant select, insert, update, delete on all tables in schema webhooks to bantu_app;
alter default privileges in schema webhooks grant select, insert, update, delete on tables to bantu_app;
