-- Files of one environment. `file` keeps the seed's columns (id, user_id, name, path);
-- user_id is the owner: null for a file the tenant owns (uploaded by a key without owner_id).
create schema if not exists files;

create table if not exists files.file (
  id           text primary key,
  tenant_id    text not null,
  user_id      text,
  name         text not null,
  path         text not null,
  size         bigint not null,
  content_type text not null,
  sha256       text not null,
  version      int not null,
  created_at   timestamptz not null default now(),
  updated_at   timestamptz not null default now(),
  deleted_at   timestamptz
);
-- One live file per name, folder and owner. coalesce: tenant-owned files (null owner) clash too.
create unique index if not exists file_name_unique
  on files.file (tenant_id, coalesce(user_id, ''), path, name) where deleted_at is null;
-- Lists, newest first (ids are time-ordered): all of a tenant, one owner's, one folder's.
create index if not exists file_tenant_list on files.file (tenant_id, id desc) where deleted_at is null;
create index if not exists file_owner_list on files.file (tenant_id, user_id, id desc) where deleted_at is null;
create index if not exists file_path_list on files.file (tenant_id, path, id desc) where deleted_at is null;

-- Every version ever recorded, with the blob (sha256) that holds its bytes. Never updated.
create table if not exists files.file_version (
  file_id      text not null references files.file (id),
  tenant_id    text not null,
  version      int not null,
  sha256       text not null,
  size         bigint not null,
  content_type text not null,
  name         text not null,
  path         text not null,
  created_at   timestamptz not null default now(),
  primary key (file_id, version)
);
-- The orphan-blob sweep asks "does any version use this blob?".
create index if not exists file_version_sha256 on files.file_version (sha256);

-- Storage use per tenant, updated in the same transaction as each change; the quota check
-- is a conditional update of this row, so concurrent uploads cannot overshoot it together.
create table if not exists files.usage (
  tenant_id text primary key,
  files     bigint not null default 0,
  bytes     bigint not null default 0,
  versions  bigint not null default 0
);

-- Answers given to requests that carried an Idempotency-Key, kept 24 h. A row commits in the
-- same transaction as the change it answers, so a replay never points at a change that did not happen.
create table if not exists files.idempotency (
  tenant_id    text not null,
  principal    text not null,
  key          text not null,
  fingerprint  text not null,
  status       int not null,
  response     jsonb not null,
  created_at   timestamptz not null default now(),
  expires_at   timestamptz not null,
  primary key (tenant_id, principal, key)
);
create index if not exists idempotency_expiry on files.idempotency (expires_at);

do $$
declare t text;
begin
  foreach t in array array['file', 'file_version', 'usage', 'idempotency'] loop
    execute format('alter table files.%I enable row level security', t);
    execute format('drop policy if exists tenant_isolation on files.%I', t);
    execute format($p$create policy tenant_isolation on files.%I
      using (tenant_id = current_setting('bantu.tenant_id', true))
      with check (tenant_id = current_setting('bantu.tenant_id', true))$p$, t);
  end loop;
end $$;

grant usage on schema files to bantu_app;
grant select, insert, update, delete on all tables in schema files to bantu_app;
alter default privileges in schema files grant select, insert, update, delete on tables to bantu_app;
