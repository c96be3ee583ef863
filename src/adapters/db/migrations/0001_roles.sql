-- The role every tenant-bound transaction switches to (SET LOCAL ROLE bantu_app): it owns
-- nothing and has no BYPASSRLS, so row-level security applies even to a superuser session.
do $$ begin
  create role bantu_app nologin;
exception when duplicate_object or unique_violation then null;
end $$;
do $$ begin
  execute format('grant bantu_app to %I', current_user);
exception when others then null;
end $$;
