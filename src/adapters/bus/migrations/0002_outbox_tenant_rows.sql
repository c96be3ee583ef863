-- bus.append inserts with RETURNING, which needs SELECT on the returned columns: without
-- it every append from a tenant-bound transaction (role bantu_app) failed with "permission
-- denied for table outbox". Grant it, but only on the tenant's own events (row-level
-- security). The dispatcher connects as the table's owner, to which these policies do not apply.
alter table bus.outbox enable row level security;
drop policy if exists tenant_events on bus.outbox;
create policy tenant_events on bus.outbox
  using (tenant_id = current_setting('bantu.tenant_id', true))
  with check (tenant_id = current_setting('bantu.tenant_id', true));
grant select on bus.outbox to bantu_app;
