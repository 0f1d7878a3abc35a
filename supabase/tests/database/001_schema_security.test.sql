-- The schema's security posture, the checks Supabase's linter makes:
-- RLS everywhere, pinned search_path, security_invoker views, service-only
-- functions. Lists are compared as sets (is_empty, set_eq): the catalog
-- returns rows in no defined order.
begin;
\ir ../support/pgtap-helpers.psql
select plan(11);

-- test: every table of ours has RLS
select is_empty(
  $$select c.oid::regclass::text from pg_class c join pg_namespace n on n.oid = c.relnamespace
    where c.relkind in ('r', 'p') and n.nspname in ('public', 'ops') and not c.relrowsecurity$$,
  'RLS is enabled on every table in public and ops');

-- test: every function of ours pins search_path to '' (but the one procedure
-- that commits between rounds: Postgres refuses COMMIT in a procedure with a
-- SET clause; it is not security definer and qualifies every name)
select set_eq(
  $$select p.oid::regprocedure::text from pg_proc p join pg_namespace n on n.oid = p.pronamespace
    where n.nspname in ('public', 'ops') and not coalesce(p.proconfig @> array['search_path=""'], false)$$,
  array['ops.purge_nightly(integer)'], 'every function in public and ops sets search_path = ''''');
select ok((select not prosecdef from pg_proc where oid = 'ops.purge_nightly(integer)'::regprocedure),
  'and the procedure that does not is not security definer');

select is_empty(
  $$select c.oid::regclass::text from pg_class c join pg_namespace n on n.oid = c.relnamespace
    where c.relkind = 'v' and n.nspname in ('public', 'ops')
      and not coalesce(c.reloptions @> array['security_invoker=true'], false)$$,
  'every view is security_invoker');

select set_eq(
  $$select p.oid::regprocedure::text from pg_proc p join pg_namespace n on n.oid = p.pronamespace
    where n.nspname in ('public', 'ops') and p.prosecdef$$,
  array['ops.audit_direct_change()', 'ops.audit(text,text,uuid,text,jsonb,jsonb)',
        -- members' data: the erasure (also from the auth.users trigger), its record and the opt-out audit
        'ops.forget_deleted_auth_user()', 'ops.forget_user(uuid,text,timestamp with time zone,text)',
        'ops.record_opt_out_change()', 'ops.redis_erasure_done(bigint,integer,text,text,timestamp with time zone)',
        -- the usage log's partitions: creating and dropping one takes the table's owner
        'ops.create_usage_partition(date)', 'ops.drop_usage_partitions_before(timestamp with time zone)'],
  'only the audit and erasure writers and the usage partitions'' maker and dropper are security definer (nobody else may insert an audit or erasure row)');

-- test: anon and authenticated can execute none of the service functions
select is_empty(
  $$select r.role, p.oid::regprocedure::text from pg_proc p join pg_namespace n on n.oid = p.pronamespace
    cross join (values ('anon'), ('authenticated')) r(role)
    where n.nspname in ('public', 'ops') and has_function_privilege(r.role, p.oid, 'execute')$$,
  'anon and authenticated may execute no function in public or ops');
select ok(has_function_privilege('service_role', 'public.agent_begin_turn(uuid, uuid, text, text, uuid, integer, integer, integer, integer, integer, boolean, boolean, text, integer, text, integer, timestamptz, text, text, integer)', 'execute'),
  'service_role may execute agent_begin_turn');
select ok(not has_schema_privilege('authenticated', 'ops', 'usage') and not has_schema_privilege('anon', 'ops', 'usage'),
  'anon and authenticated cannot even see schema ops');

-- test: anon calling a service function fails
select tests.authenticate_as_anon();
select throws_ok(
  $$select public.agent_begin_turn(gen_random_uuid(), gen_random_uuid())$$,
  '42501', null, 'anon calling agent_begin_turn is denied');
select tests.clear_authentication();
select tests.authenticate_as(tests.create_user());
select throws_ok(
  $$select public.agent_log_usage('{"success": true}'::jsonb)$$,
  '42501', null, 'authenticated calling agent_log_usage is denied');
select throws_ok(
  $$select public.agent_end_turn(gen_random_uuid(), gen_random_uuid(), gen_random_uuid(), 'app', 'a', 'b')$$,
  '42501', null, 'authenticated calling agent_end_turn is denied');
select tests.clear_authentication();

select * from finish();
rollback;
