-- Zip exports of one environment: a durable job per row. The worker claims pending rows;
-- a row is `ready` only once its zip is durable in the export store (archive_key).
create schema if not exists exports;

create table if not exists exports.export (
  id               text primary key,
  tenant_id        text not null,
  -- Who asked: the job runs with that principal's visibility, and only they see the export.
  creator          text not null,
  principal        jsonb not null,
  include_content  boolean not null,
  include_versions boolean not null,
  path             text,
  email            text not null,
  status           text not null default 'pending' check (status in ('pending', 'running', 'ready', 'failed', 'expired')),
  files_total      int,
  files_done       int not null default 0,
  bytes            bigint not null default 0,
  attempts         int not null default 0,
  error            text,
  archive_key      text,
  archive_size     bigint,
  created_at       timestamptz not null default now(),
  completed_at     timestamptz,
  expires_at       timestamptz
);
-- A creator's exports, newest first; the work queue; the sweep.
create index if not exists export_creator on exports.export (tenant_id, creator, id desc);
create index if not exists export_queue on exports.export (id) where status in ('pending', 'running');
create index if not exists export_expiry on exports.export (expires_at) where status in ('ready', 'failed');

alter table exports.export enable row level security;
drop policy if exists tenant_isolation on exports.export;
create policy tenant_isolation on exports.export
  using (tenant_id = current_setting('bantu.tenant_id', true))
  with check (tenant_id = current_setting('bantu.tenant_id', true));

grant usage on schema exports to bantu_app;
grant select, insert, update, delete on all tables in schema exports to bantu_app;
