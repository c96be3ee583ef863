-- The backup service's own history of every file version, in each environment database.
create schema if not exists backup;

-- One row per File_* event recorded. The bytes live in the backup store under `sha256`
-- (content-addressed: equal bytes are stored once, however many versions share them).
-- A delete is an entry too (event File_delete, the file's last state), so history shows it.
create table if not exists backup.version (
  tenant_id    text not null,
  file_id      text not null,
  version      int not null,
  event        text not null check (event in ('File_create', 'File_update', 'File_delete')),
  -- Redelivered events (the bus is at least once) hit this key and change nothing.
  event_id     text not null,
  owner_id     text,
  name         text not null,
  path         text not null,
  size         bigint not null,
  content_type text not null,
  sha256       text not null,
  -- When the version was made (the file's updated_at; a delete's event time).
  created_at   timestamptz not null,
  -- When the change was committed to the outbox: what a point-in-time restore compares with.
  occurred_at  timestamptz not null,
  backed_up_at timestamptz not null default clock_timestamp(),
  primary key (tenant_id, file_id, version, event)
);
create unique index if not exists version_event_id on backup.version (event_id);
-- Sweeps ask "does any version still use this blob?".
create index if not exists version_sha256 on backup.version (sha256);
-- Point-in-time restores walk a tenant's history by time.
create index if not exists version_tenant_time on backup.version (tenant_id, occurred_at);
-- The lag metric asks for the newest recorded change across tenants.
create index if not exists version_occurred_at on backup.version (occurred_at);

-- Retention per tenant. No row: keep everything.
create table if not exists backup.policy (
  tenant_id  text primary key,
  keep_last  int check (keep_last >= 1),
  keep_days  int check (keep_days >= 1),
  updated_at timestamptz not null default now(),
  check (keep_last is null or keep_days is null)
);

do $$
declare t text;
begin
  foreach t in array array['version', 'policy'] loop
    execute format('alter table backup.%I enable row level security', t);
    execute format('drop policy if exists tenant_isolation on backup.%I', t);
    execute format($p$create policy tenant_isolation on backup.%I
      using (tenant_id = current_setting('bantu.tenant_id', true))
      with check (tenant_id = current_setting('bantu.tenant_id', true))$p$, t);
  end loop;
end $$;

grant usage on schema backup to bantu_app;
grant select, insert, update, delete on all tables in schema backup to bantu_app;
alter default privileges in schema backup grant select, insert, update, delete on tables to bantu_app;
