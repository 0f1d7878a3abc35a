-- Sessions: created on the first turn, appended, trimmed to the cap, TTL
-- refreshed, history returned oldest first, ownership for good.
begin;
\ir ../support/pgtap-helpers.psql
select plan(13);

-- setup
create temp table t_ctx as
select gen_random_uuid() as org, tests.create_user() as alice, tests.create_user() as mallory, gen_random_uuid() as sid;
select tests.add_member(org, alice), tests.add_member(org, mallory) from t_ctx;
grant select on t_ctx to service_role;

-- test: service role stores three turns with a cap of 4 messages
select tests.authenticate_as_service_role();
select public.agent_end_turn(sid, org, alice, 'app', 'q' || g, 'a' || g, 3600, 4, '2026-05-01 10:00:00+00'::timestamptz + g * interval '1 minute')
from t_ctx, generate_series(1, 3) g;
select tests.clear_authentication();

select is((select count(*)::int from public.agent_session_messages m, t_ctx where m.session_id = t_ctx.sid), 4,
  'three turns with a cap of 4 keep 4 messages');
select results_eq(
  $$select m.content from public.agent_session_messages m, t_ctx where m.session_id = t_ctx.sid order by m.id$$,
  array['q2', 'a2', 'q3', 'a3'], 'the newest are kept, in order');
select is((select expires_at from public.agent_sessions s, t_ctx where s.id = t_ctx.sid),
  '2026-05-01 11:03:00+00'::timestamptz, 'expires_at is the last turn plus the TTL');

select is(
  (select tests.begin_turn(org, alice, null, '2026-05-01 10:30:00+00', p_session => sid) -> 'history' from t_ctx),
  '[{"role":"user","content":"q2"},{"role":"assistant","content":"a2"},{"role":"user","content":"q3"},{"role":"assistant","content":"a3"}]'::jsonb,
  'begin-turn returns the history oldest first');
select is(
  (select jsonb_array_length(public.agent_begin_turn(p_org_id => org, p_user_id => alice, p_session_id => sid, p_max_messages => 2,
     p_now => '2026-05-01 10:30:00+00') -> 'history') from t_ctx),
  2, 'and at most p_max_messages of it');
select is(
  (select public.agent_begin_turn(p_org_id => org, p_user_id => alice, p_session_id => sid, p_load_history => false,
     p_now => '2026-05-01 10:30:00+00') -> 'history' from t_ctx),
  '[]'::jsonb, 'nothing when the Redis store asks for no history');

-- another member of the same org cannot read or write it
select is((select tests.begin_turn(org, mallory, null, '2026-05-01 10:30:00+00', p_session => sid) ->> 'outcome' from t_ctx),
  'session_not_found', 'another user reading the session gets session_not_found');
select is((select public.agent_end_turn(sid, org, mallory, 'app', 'x', 'y', 3600, 4, '2026-05-01 10:31:00+00') ->> 'outcome' from t_ctx),
  'session_not_found', 'and cannot append to it');
select is((select count(*)::int from public.agent_session_messages m, t_ctx where m.session_id = t_ctx.sid), 4,
  'nothing was appended');

-- expiry
select is(
  (select tests.begin_turn(org, alice, null, '2026-05-01 12:00:00+00', p_session => sid) -> 'history' from t_ctx),
  '[]'::jsonb, 'an expired session reads as empty');
select is((select tests.begin_turn(org, mallory, null, '2026-05-01 12:00:00+00', p_session => sid) ->> 'outcome' from t_ctx),
  'session_not_found', 'and still belongs to its owner after expiry');
select public.agent_end_turn(sid, org, alice, 'app', 'again', 'welcome back', 3600, 4, '2026-05-01 12:00:00+00') from t_ctx;
select results_eq(
  $$select m.content from public.agent_session_messages m, t_ctx where m.session_id = t_ctx.sid order by m.id$$,
  array['again', 'welcome back'], 'a turn on an expired session starts it afresh');
select is((select expires_at from public.agent_sessions s, t_ctx where s.id = t_ctx.sid),
  '2026-05-01 13:00:00+00'::timestamptz, 'and refreshes its TTL');

select * from finish();
rollback;
