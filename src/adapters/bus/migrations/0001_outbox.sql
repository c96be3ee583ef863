-- The transactional outbox of one environment database, and the durable cursors of its consumers.
create schema if not exists bus;

create table if not exists bus.outbox (
  id          bigserial primary key,
  -- The writing transaction's id. Rows are read in (xid, id) order and only once their
  -- xid is below the oldest running transaction: ids alone can commit out of order.
  xid         xid8 not null default pg_current_xact_id(),
  type        text not null,
  tenant_id   text not null,
  owner_id    text,
  actor       jsonb not null,
  data        jsonb not null,
  -- clock time, not now(): now() is the transaction's start, which a slow upload makes stale
  occurred_at timestamptz not null default clock_timestamp()
);
create index if not exists outbox_delivery_order on bus.outbox (xid, id);
create index if not exists outbox_occurred_at on bus.outbox (occurred_at);

create table if not exists bus.consumer_cursor (
  consumer          text primary key,
  xid               xid8 not null default '0',
  id                bigint not null default 0,
  last_delivered_at timestamptz
);

-- Events a consumer gave up on after its tries: set aside, never blocking later ones.
create table if not exists bus.dead_letter (
  consumer   text not null,
  event_id   bigint not null references bus.outbox (id) on delete cascade,
  attempts   int not null,
  error      text not null,
  created_at timestamptz not null default now(),
  primary key (consumer, event_id)
);

-- Tenant-bound transactions (role bantu_app) append events; only the bus itself reads them.
grant usage on schema bus to bantu_app;
grant insert on bus.outbox to bantu_app;
grant usage on sequence bus.outbox_id_seq to bantu_app;
