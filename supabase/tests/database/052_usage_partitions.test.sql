-- The usage log is partitioned by day: rows of any day land (a day without
-- its partition in the default one, moved when the day is made), metering
-- once holds across partitions through the request's arrival time, and
-- retention drops whole days.
begin;
\ir ../support/pgtap-helpers.psql
select plan(15);

-- setup: three days long ago, so the partitions made by the migration stay out of the way
create temp table t_ctx as select gen_random_uuid() as org;
grant select on t_ctx to service_role;

-- test: structure
select is((select c.relkind::text from pg_class c where c.oid = 'public.agent_usage_events'::regclass), 'p',
  'public.agent_usage_events is partitioned');
select is((select pg_get_partkeydef('public.agent_usage_events'::regclass)), 'RANGE (created_at)', 'by range of created_at');
select ok(to_regclass('public.agent_usage_events_p' || to_char(now() at time zone 'UTC' + interval '7 days', 'YYYYMMDD')) is not null,
  'the partitions of the next seven days exist');
select ok((select bool_and(c.relrowsecurity) from pg_inherits i join pg_class c on c.oid = i.inhrelid
           where i.inhparent = 'public.agent_usage_events'::regclass), 'every partition has row-level security');

-- test: a row of a day without a partition lands (default partition), and moves when its day is made
select tests.authenticate_as_service_role();
select public.agent_log_usage(jsonb_build_object('request_id', 'old-' || i, 'org_id', org, 'success', true,
  'total_tokens', 10, 'created_at', timestamptz '2024-02-10 12:00:00+00' + make_interval(days => i)))
from t_ctx, generate_series(0, 2) i;
select tests.clear_authentication();
select is((select count(*)::int from public.agent_usage_events_default where request_id like 'old-%'), 3,
  'back-dated rows without a partition land in the default partition');
select is(ops.create_usage_partitions(timestamptz '2024-02-11 00:00:00+00', 1, 1), 3, 'three days are made');
select is((select count(*)::int from public.agent_usage_events_default where request_id like 'old-%'), 0,
  'and their rows left the default partition');
select is((select tableoid::regclass::text from public.agent_usage_events where request_id = 'old-1'),
  'agent_usage_events_p20240211', 'into their day');
select is(ops.create_usage_partitions(timestamptz '2024-02-11 00:00:00+00', 1, 1), 0, 'making them again is a no-op');
select is((select billed_events::int from ops.spend_counters, t_ctx where org_id = org and month = '2024-02-01'), 3,
  'moving rows settles nothing twice (3 billed rows, counted once each)');

-- test: metered once across partitions: the same request (same arrival) twice is one row
select tests.authenticate_as_service_role();
select public.agent_log_usage(jsonb_build_object('request_id', 'old-1', 'org_id', org, 'success', true,
  'total_tokens', 10, 'created_at', timestamptz '2024-02-11 12:00:00+00')) from t_ctx;
select tests.clear_authentication();
select is((select count(*)::int from public.agent_usage_events where request_id = 'old-1'), 1,
  'a request logged again with its arrival time is not logged twice');

-- test: retention drops whole days (the bound rounded down to its day) and older rows of the default partition
select public.agent_log_usage(jsonb_build_object('request_id', 'older', 'org_id', org, 'success', true,
  'created_at', timestamptz '2023-05-01 12:00:00+00')) from t_ctx;
select is(ops.drop_usage_partitions_before(timestamptz '2024-02-12 18:00:00+00'),
  '{"usage_events_deleted": 1, "usage_partitions_dropped": 2}'::jsonb,
  'two whole days dropped, the older row of the default partition deleted');
select is((select array_agg(request_id order by request_id) from public.agent_usage_events where request_id in ('old-0', 'old-1', 'old-2', 'older')),
  array['old-2'], 'the day the bound falls in is kept whole');
select ok(to_regclass('public.agent_usage_events_p20240210') is null, 'the dropped day is gone');

-- test: callers without the service role
select tests.authenticate_as_anon();
select throws_ok($$ select ops.drop_usage_partitions_before(now()) $$, '42501', null, 'anon cannot drop usage');
select tests.clear_authentication();

select * from finish();
rollback;
