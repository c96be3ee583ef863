-- Lets one statement of a pipelined transaction (tenantBatch) refuse the whole transaction
-- when a condition it checks fails (an Idempotency-Key held by a committed twin, a quota):
-- the batch cannot look at a statement's rows before sending the next one and the COMMIT,
-- so the statement raises instead, and PostgreSQL rolls everything back. Volatile, so the
-- planner never folds a call in an untaken CASE branch. SQLSTATE BN001, the reason as message.
create or replace function public.bantu_refuse(reason text) returns int
language plpgsql volatile as $$
begin
  raise exception using errcode = 'BN001', message = reason;
end $$;
