-- agent_finish_turn: the turn and its usage row in one call; nothing logged for another owner's session.
begin;
\ir ../support/pgtap-helpers.psql
select plan(5);

-- setup
create temp table t_ctx as select gen_random_uuid() as org, gen_random_uuid() as alice, gen_random_uuid() as mallory, gen_random_uuid() as s1;
grant select on t_ctx to service_role;

-- test: service role
select tests.authenticate_as_service_role();
select is((select public.agent_finish_turn(s1, org, alice, 'app', 'q', 'a', 3600, 20,
  jsonb_build_object('request_id', 'finish-1', 'org_id', org, 'success', true, 'latency_ms', 12)) ->> 'usage_logged' from t_ctx),
  'true', 'the usage row is written with the turn');
select is((select count(*)::int from public.agent_usage_events where request_id = 'finish-1'), 1, 'exactly one usage row');
select is((select count(*)::int from public.agent_session_messages, t_ctx where session_id = s1), 2, 'and the turn is stored');
select is((select public.agent_finish_turn(s1, org, mallory, 'app', 'q', 'a', 3600, 20,
  jsonb_build_object('request_id', 'finish-2', 'success', true)) ->> 'outcome' from t_ctx),
  'session_not_found', 'another owner is refused');
select is((select count(*)::int from public.agent_usage_events where request_id = 'finish-2'), 0,
  'and nothing is logged for it here (the function logs the refusal itself)');

select * from finish();
rollback;
