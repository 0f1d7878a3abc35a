-- Finding (attack): a turn in flight while its member is erased must not
-- undo the erasure. The turn began (arrival) before ops.forget_user, and its
-- save (agent_finish_turn) comes after: it must not re-create the session
-- with the member's message, nor write a usage row with the member's id,
-- IP or client metadata. The tokens it spent are still metered for the org.
begin;
\ir ../support/pgtap-helpers.psql
select plan(7);

-- setup: alice's turn arrived 5 seconds ago; she is erased now, before it saves
create temp table t_ctx as
select gen_random_uuid() as org, tests.create_user() as alice, gen_random_uuid() as s1;
grant select on t_ctx to service_role;
select tests.add_member(org, alice) from t_ctx;
select ops.forget_user(alice, 'dpo ticket 7', now()) from t_ctx;
create temp table t_usage as
select jsonb_build_object('request_id', 'inflight-1', 'org_id', org, 'user_id', alice, 'session_id', s1,
  'channel', 'app', 'model', 'gpt-4.1-mini', 'prompt_tokens', 100, 'completion_tokens', 20, 'total_tokens', 120,
  'success', true, 'latency_ms', 5000, 'created_at', now() - interval '5 seconds',
  'metadata', jsonb_build_object('client_ip', '10.9.8.7', 'client', jsonb_build_object('phone', '+250 788 000 111'))) as u
from t_ctx;
grant select on t_usage to service_role;

-- test: the save after the erasure
select tests.authenticate_as_service_role();
select is((select public.agent_finish_turn(s1, org, alice, 'app', 'My phone is +250 788 000 111', 'Noted.', 3600, 20, u)
           ->> 'usage_logged' from t_ctx, t_usage), 'true', 'the in-flight turn is still metered');
select tests.clear_authentication();
select is((select count(*)::int from public.agent_sessions s, t_ctx where s.id = t_ctx.s1), 0,
  'its session is not re-created after the erasure');
select is((select count(*)::int from public.agent_session_messages m where m.content like '%788 000 111%'), 0,
  'nor its message');
select is((select count(*)::int from public.agent_usage_events e, t_ctx where e.user_id = t_ctx.alice), 0,
  'its usage row does not carry the erased member''s id');
select is((select (metadata ? 'client_ip') or (metadata ? 'client') from public.agent_usage_events where request_id = 'inflight-1'),
  false, 'nor her IP or client metadata');
select is((select total_tokens from public.agent_usage_events where request_id = 'inflight-1'), 120,
  'the tokens stay on the org''s bill');

-- test: a turn that arrived after the erasure is hers again (she may keep using the service)
select tests.authenticate_as_service_role();
select is((select public.agent_finish_turn(s1, org, alice, 'app', 'new question', 'new answer', 3600, 20,
  u || jsonb_build_object('request_id', 'after-1', 'created_at', now() + interval '1 second')) ->> 'outcome' from t_ctx, t_usage),
  'ok', 'a turn that arrived after the erasure is saved');
select tests.clear_authentication();

select * from finish();
rollback;
