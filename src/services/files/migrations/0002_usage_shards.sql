-- Storage use per tenant, in shards: every write of a tenant adds to its usage in its own
-- transaction, and a single row per tenant made those writes wait for each other's commit
-- (creates of one tenant ran one at a time). Without a quota a write adds to a random shard
-- and the tenant's use is the sum of its shards. With a quota every write goes to shard 0,
-- whose conditional update checks the sum: exact, since the other shards then stay still.
alter table files.usage add column if not exists shard smallint not null default 0;
alter table files.usage drop constraint if exists usage_pkey;
alter table files.usage add primary key (tenant_id, shard);
