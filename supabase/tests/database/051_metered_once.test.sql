-- Every model call is metered once: a request_id that is already logged is
-- not logged again (agent_log_usage and agent_finish_turn skip it), however
-- the two writes interleave. Aggregated rows are not bound by it.
begin;
\ir ../support/pgtap-helpers.psql
select plan(8);

-- setup
create temp table t_ctx as select gen_random_uuid() as org, gen_random_uuid() as alice, gen_random_uuid() as s1;
grant select on t_ctx to service_role;

select tests.authenticate_as_service_role();

-- test: the same request logged twice is one row, the first one
select lives_ok($$ select public.agent_log_usage(jsonb_build_object('request_id', 'once-1', 'success', false,
  'error_code', 'session_store_error', 'prompt_tokens', 10, 'completion_tokens', 5, 'total_tokens', 15)) $$,
  'the first row is written');
select lives_ok($$ select public.agent_log_usage(jsonb_build_object('request_id', 'once-1', 'success', true,
  'prompt_tokens', 10, 'completion_tokens', 5, 'total_tokens', 15)) $$,
  'logging the same request again is not an error');
select is((select count(*)::int from public.agent_usage_events where request_id = 'once-1'), 1, 'and writes no second row');

-- test: a save that timed out in the function but commits after the function
-- logged the call itself (agent_finish_turn after agent_log_usage)
select public.agent_log_usage(jsonb_build_object('request_id', 'late-save', 'org_id', org, 'success', false,
  'error_code', 'session_store_error', 'total_tokens', 22)) from t_ctx;
select is((select public.agent_finish_turn(s1, org, alice, 'app', 'q', 'a', 3600, 20,
  jsonb_build_object('request_id', 'late-save', 'org_id', org, 'success', true, 'total_tokens', 22)) ->> 'outcome' from t_ctx),
  'ok', 'the late save still stores the turn');
select is((select count(*)::int from public.agent_usage_events where request_id = 'late-save'), 1,
  'but the call is metered once');

-- test: aggregated rows are not bound by the request id
select public.agent_log_usage(jsonb_build_object('request_id', 'agg', 'success', false, 'error_code', 'rate_limit',
  'event_count', 3, 'metadata', jsonb_build_object('aggregated', true))) from generate_series(1, 2);
select is((select sum(event_count)::int from public.agent_usage_events where request_id = 'agg'), 6,
  'two aggregated rows may share an id');
select tests.clear_authentication();

select is(
  (select pg_get_indexdef(i.indexrelid) ~ 'UNIQUE.*\(request_id, created_at\) WHERE' from pg_index i
   where i.indrelid = 'public.agent_usage_events'::regclass and i.indisunique and not i.indisprimary),
  true, 'a partial unique index on request_id and the arrival (the partition key) holds the rule for every writer');

-- test: callers without the service role
select tests.authenticate_as_anon();
select throws_ok($$ select public.agent_log_usage('{"request_id": "x", "success": true}'::jsonb) $$, '42501', null,
  'anon cannot write usage rows');
select tests.clear_authentication();

select * from finish();
rollback;
