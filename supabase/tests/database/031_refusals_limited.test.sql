-- Refusals of a signed-in user are limited: forbidden, opt_out and
-- session_not_found each consume one slot of the user: bucket (and no other
-- bucket) and carry the rate_limit object; past the user limit they are
-- rate_limit. The Redis store's ownership (p_session_owned) is refused in the
-- same order and charged the same as the Postgres store's own check.
begin;
\ir ../support/pgtap-helpers.psql
select plan(17);

-- setup
create temp table t_ctx as
select gen_random_uuid() as org, gen_random_uuid() as victim_org, tests.create_user() as alice, tests.create_user() as bob,
       tests.create_user() as carol, tests.create_user() as dave, gen_random_uuid() as sid,
       timestamptz '2026-06-01 10:00:00+00' as t0,
       '2001:db8:' || substr(md5(random()::text), 1, 4) || '::1' as ip;
select tests.add_member(org, alice), tests.add_member(org, bob), tests.add_member(org, carol), tests.add_member(org, dave)
from t_ctx;
select public.agent_end_turn(sid, org, alice, 'app', 'q', 'a', 3600, 20, t0) from t_ctx;
select ops.add_opt_out(org, carol, null, 'stop', 'test') from t_ctx;

-- test: forbidden (a stranger to victim_org), with a user limit of 3
create temp table t_forbidden as
select i, tests.begin_turn(victim_org, alice, ip, t0 + make_interval(secs => i), p_user_limit => 3) as r
from t_ctx, generate_series(1, 5) i;
select results_eq($$ select r ->> 'outcome' from t_forbidden order by i $$,
  array['forbidden', 'forbidden', 'forbidden', 'rate_limit', 'rate_limit'],
  'three forbidden refusals, then rate_limit past the user limit');
select is((select r -> 'rate_limit' ->> 'remaining' from t_forbidden where i = 2), '1',
  'a refusal carries the rate_limit object of the user: slot it consumed');
select is((select r -> 'rate_limit' ->> 'scope' from t_forbidden where i = 4), 'user', 'the 429 names the user scope');
select is((select r -> 'member' from t_forbidden where i = 4), 'false'::jsonb, 'and says the caller is not a member');
select is((select slot_total from ops.rate_limits, t_ctx where bucket_key = 'user:' || alice), 3,
  'the user: bucket holds the three refusals');
select is((select count(*)::int from ops.rate_limits, t_ctx where bucket_key in ('org:' || victim_org, 'ip:' || ip)), 0,
  'the named org and the address pay nothing');

-- test: opt_out
select results_eq(
  $$ select tests.begin_turn(org, carol, null, t0 + make_interval(secs => i), p_user_limit => 2) ->> 'outcome'
     from t_ctx, generate_series(1, 3) i order by i $$,
  array['opt_out', 'opt_out', 'rate_limit'], 'opt_out refusals are charged the same way');
select is((select slot_total from ops.rate_limits, t_ctx where bucket_key = 'user:' || carol), 2, 'two user: slots');

-- test: session_not_found, Postgres store (the session row)
select results_eq(
  $$ select tests.begin_turn(org, bob, null, t0 + make_interval(secs => i), p_user_limit => 2, p_session => sid) ->> 'outcome'
     from t_ctx, generate_series(1, 3) i order by i $$,
  array['session_not_found', 'session_not_found', 'rate_limit'], 'another member''s session: refused, then rate_limit');
select is((select slot_total from ops.rate_limits, t_ctx where bucket_key = 'user:' || bob), 2, 'two user: slots');
select is((select count(*)::int from ops.rate_limits, t_ctx where bucket_key = 'org:' || org), 0,
  'no refusal so far charged the org: bucket');

-- test: session_not_found, Redis store (p_session_owned = false, no session id in Postgres)
select results_eq(
  $$ select public.agent_begin_turn(p_org_id => org, p_user_id => dave, p_user_limit => 2, p_load_history => false,
       p_session_owned => false, p_now => t0 + make_interval(secs => i)) ->> 'outcome'
     from t_ctx, generate_series(1, 3) i order by i $$,
  array['session_not_found', 'session_not_found', 'rate_limit'], 'p_session_owned = false is refused and charged the same');
select is((select slot_total from ops.rate_limits, t_ctx where bucket_key = 'user:' || dave), 2, 'two user: slots');
select is(
  (select public.agent_begin_turn(p_org_id => victim_org, p_user_id => dave, p_user_limit => 10, p_session_owned => false,
     p_now => t0 + interval '10 seconds') ->> 'outcome' from t_ctx),
  'forbidden', 'membership still comes before the store''s ownership');
select is(
  (select public.agent_begin_turn(p_org_id => org, p_user_id => carol, p_user_limit => 10, p_session_owned => false,
     p_now => t0 + interval '10 minutes') ->> 'outcome' from t_ctx),
  'opt_out', 'and the opt-out too');
select is(
  (select public.agent_begin_turn(p_org_id => org, p_user_id => dave, p_user_limit => 10, p_session_owned => true,
     p_now => t0 + interval '10 minutes') ->> 'outcome' from t_ctx),
  'ok', 'a session the store owns is served');

-- test: callers without the service role
select tests.authenticate_as((select alice from t_ctx));
select throws_ok($$ select public.agent_begin_turn(gen_random_uuid(), gen_random_uuid(), p_session_owned => true) $$,
  '42501', null, 'authenticated cannot call agent_begin_turn');
select tests.clear_authentication();

select * from finish();
rollback;
