-- Tenants span both environments, so they live in the control database.
create schema if not exists identity;

create table if not exists identity.tenant (
  id         text primary key,
  name       text not null,
  created_at timestamptz not null default now()
);
create unique index if not exists tenant_name_unique on identity.tenant (lower(name));
