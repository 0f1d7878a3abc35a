-- What members, strangers and anon can read: a member its own sessions and
-- their messages, nothing else.
begin;
\ir ../support/pgtap-helpers.psql
select plan(9);

-- setup
create temp table t_ctx as
select gen_random_uuid() as org, tests.create_user() as alice, tests.create_user() as bob, gen_random_uuid() as sid;
grant select on t_ctx to anon, authenticated, service_role;
select tests.add_member(org, alice), tests.add_member(org, bob) from t_ctx;
select public.agent_end_turn(sid, org, alice, 'app', 'hello', 'hi alice', 3600, 10) from t_ctx;
select public.agent_log_usage(jsonb_build_object('org_id', org, 'user_id', alice, 'success', true)) from t_ctx;
select ops.add_opt_out(org, bob) from t_ctx;

-- test: member
select tests.authenticate_as((select alice from t_ctx));
select is((select count(*)::int from public.agent_sessions), 1, 'alice sees her session');
select is((select count(*)::int from public.agent_session_messages), 2, 'and its messages');
select throws_ok($$select count(*) from public.agent_usage_events$$, '42501', null, 'but not the usage log');
select throws_ok($$select count(*) from public.agent_opt_outs$$, '42501', null, 'nor the opt-out registry');
select throws_ok($$select count(*) from ops.rate_limits$$, '42501', null, 'nor the rate-limit buckets');
select throws_ok($$insert into public.agent_sessions (org_id, user_id, expires_at) values (gen_random_uuid(), gen_random_uuid(), now())$$,
  '42501', null, 'and cannot write sessions');
select tests.clear_authentication();

-- test: another member of the same org
select tests.authenticate_as((select bob from t_ctx));
select is((select count(*)::int from public.agent_sessions), 0, 'bob does not see alice''s session');
select is((select count(*)::int from public.agent_session_messages), 0, 'nor its messages');
select tests.clear_authentication();

-- test: anon
select tests.authenticate_as_anon();
select throws_ok($$select count(*) from public.agent_sessions$$, '42501', null, 'anon reads no session');
select tests.clear_authentication();

select * from finish();
rollback;
