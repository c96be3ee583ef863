-- Users, their sessions (refresh token families), password reset tokens and the audit
-- trail of one environment. Every table is tenant-owned: RLS on bantu.tenant_id.
-- Secrets (refresh and reset tokens) are kept only as SHA-256 hashes: they carry 256
-- random bits, so a fast hash is enough and a lookup stays one index probe.

create table if not exists identity.app_user (
  id            text primary key,
  tenant_id     text not null,
  email         text not null,
  name          text not null,
  role          text not null default 'user' check (role in ('user', 'admin')),
  password_hash text not null,
  created_at    timestamptz not null default now(),
  updated_at    timestamptz not null default now()
);
-- Emails are compared case-insensitively, per tenant (the environment is the database).
create unique index if not exists app_user_email on identity.app_user (tenant_id, lower(email));
create index if not exists app_user_tenant on identity.app_user (tenant_id, id desc);

create table if not exists identity.refresh_token (
  id          text primary key,
  tenant_id   text not null,
  user_id     text not null references identity.app_user (id) on delete cascade,
  -- All tokens descending from one login share a family; reuse of a spent one revokes it.
  family_id   text not null,
  hash        bytea not null unique,
  created_at  timestamptz not null default now(),
  expires_at  timestamptz not null,
  used_at     timestamptz,
  revoked_at  timestamptz
);
create index if not exists refresh_token_family on identity.refresh_token (family_id);
create index if not exists refresh_token_user on identity.refresh_token (user_id);

create table if not exists identity.password_reset (
  id          text primary key,
  tenant_id   text not null,
  user_id     text not null references identity.app_user (id) on delete cascade,
  hash        bytea not null unique,
  created_at  timestamptz not null default now(),
  expires_at  timestamptz not null,
  used_at     timestamptz
);
create index if not exists password_reset_user on identity.password_reset (user_id);

create table if not exists identity.audit_event (
  id          text primary key,
  tenant_id   text not null,
  type        text not null,
  actor       jsonb,
  ip          text,
  detail      jsonb not null default '{}',
  created_at  timestamptz not null default now()
);
create index if not exists audit_event_tenant on identity.audit_event (tenant_id, id desc);

do $$
declare t text;
begin
  foreach t in array array['app_user', 'refresh_token', 'password_reset', 'audit_event'] loop
    execute format('alter table identity.%I enable row level security', t);
    execute format('drop policy if exists tenant_isolation on identity.%I', t);
    execute format($p$create policy tenant_isolation on identity.%I
      using (tenant_id = current_setting('bantu.tenant_id', true))
      with check (tenant_id = current_setting('bantu.tenant_id', true))$p$, t);
    execute format('grant select, insert, update, delete on identity.%I to bantu_app', t);
  end loop;
end $$;

-- The JWT signing keys of this environment. Not tenant data: only the service's own
-- connection reads them, never a tenant-bound transaction. The private key is sealed
-- with AES-256-GCM under the instance's secret key (secrets/secret-key or BANTU_SECRET_KEY).
create table if not exists identity.signing_key (
  kid          text primary key,
  algorithm    text not null,
  public_jwk   jsonb not null,
  private_enc  bytea not null,
  created_at   timestamptz not null default now(),
  -- Set when a newer key took over; the key still verifies tokens until they expire.
  retired_at   timestamptz
);
-- At most one key signs at a time.
create unique index if not exists signing_key_active on identity.signing_key ((true)) where retired_at is null;
revoke all on identity.signing_key from bantu_app;
