-- API keys of one environment. Only a SHA-256 of each key is kept: keys carry 190 random
-- bits, so a fast hash is safe, and lookups by hash stay one index probe.
create schema if not exists identity;

create table if not exists identity.api_key (
  id           text primary key,
  tenant_id    text not null,
  kind         text not null check (kind in ('account', 'application')),
  name         text not null,
  scopes       text[] not null default '{}',
  prefix       text not null,
  hash         bytea not null unique,
  created_at   timestamptz not null default now(),
  revoked_at   timestamptz
);
create index if not exists api_key_tenant on identity.api_key (tenant_id, id desc);

alter table identity.api_key enable row level security;
drop policy if exists tenant_isolation on identity.api_key;
create policy tenant_isolation on identity.api_key
  using (tenant_id = current_setting('bantu.tenant_id', true))
  with check (tenant_id = current_setting('bantu.tenant_id', true));

grant usage on schema identity to bantu_app;
grant select, insert, update, delete on all tables in schema identity to bantu_app;
alter default privileges in schema identity grant select, insert, update, delete on tables to bantu_app;
