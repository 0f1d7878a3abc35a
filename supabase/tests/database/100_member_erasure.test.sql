-- Erasure of one member: sessions, messages, stored answers, reservations
-- and buckets go; usage rows stay under a pseudonym without personal fields,
-- so the org's bills do not change; the erasure is recorded and its Redis
-- part queued; deleting the auth user runs the same erasure, and a new
-- account with the same id starts with no history. Export lists what is
-- kept. Only service_role may erase or export.
begin;
\ir ../support/pgtap-helpers.psql
select plan(32);

-- setup: alice talks in two sessions, with a stored answer, a reservation and usage rows; bob is untouched
create temp table t_ctx as
select gen_random_uuid() as org, tests.create_user() as alice, tests.create_user() as bob,
       gen_random_uuid() as s1, gen_random_uuid() as s2, gen_random_uuid() as sb;
grant select on t_ctx to service_role, authenticated, anon;
select tests.add_member(org, alice), tests.add_member(org, bob) from t_ctx;
select public.agent_end_turn(s1, org, alice, 'app', 'My phone is +250 788 123 456', 'Noted.', 86400, 20) from t_ctx;
select public.agent_end_turn(s2, org, alice, 'app', 'I live at KG 11 Ave, Kigali', 'Thanks.', 86400, 20) from t_ctx;
select public.agent_end_turn(sb, org, bob, 'app', 'bob question', 'bob answer', 86400, 20) from t_ctx;
select tests.begin_turn(org, alice, '10.1.2.3', now()) from t_ctx;
insert into ops.idempotency_keys (user_id, idempotency_key, request_hash, org_id, request_id, state, response, created_at, completed_at, expires_at)
select alice, 'key-1', 'h', org, 'r-key-1', 'completed', '{"message": "Your balance is 12,000"}', now(), now(), now() + interval '1 day' from t_ctx;
select ops.add_opt_out(org, alice, 'sms', 'asked by phone', 'dpo@example.test') from t_ctx;
insert into ops.token_reservations (request_id, org_id, user_id, model, tokens, expires_at)
select 'r-open', org, alice, 'gpt-4.1-mini', 1000, now() + interval '5 minutes' from t_ctx;
insert into public.agent_usage_events (request_id, org_id, user_id, session_id, channel, model, prompt_tokens, completion_tokens,
                                       total_tokens, latency_ms, success, error_code, error_message, metadata, created_at)
select 'er-' || i || '-' || u.who, t.org, u.id, case when u.who = 'a' then t.s1 else t.sb end, 'app', 'gpt-4.1-mini', 100 * i, 10 * i, 110 * i, 40, i <> 3,
       case when i = 3 then 'openai_error' end, case when i = 3 then 'upstream said: My phone is +250 788 123 456' end,
       jsonb_build_object('store', 'supabase', 'client_ip', '10.1.2.' || i, 'client_request_id', 'req-' || i,
                          'client', jsonb_build_object('phone', '+250 788 123 456', 'address', 'KG 11 Ave')),
       now() - make_interval(mins => i)
from t_ctx t, generate_series(1, 3) i, (select alice as id, 'a' as who from t_ctx union all select bob, 'b' from t_ctx) u;
create temp table t_before as
select (select sum(total_tokens) from public.agent_usage_events e, t_ctx where e.org_id = t_ctx.org) as tokens,
       (select jsonb_agg(to_jsonb(r) order by r.org_id) from ops.usage_report(now() - interval '1 hour', now(), null, null, true) r) as report,
       (select sum(usd) from ops.spend_counters c, t_ctx where c.org_id = t_ctx.org) as spend;

-- test: anon and authenticated (alice herself, or bob against alice) may not erase or export
select tests.authenticate_as((select bob from t_ctx));
select throws_ok($$ select ops.forget_user((select alice from t_ctx), 'bob') $$, '42501', null,
  'a member cannot erase another member');
select throws_ok($$ select ops.export_user((select alice from t_ctx)) $$, '42501', null,
  'nor export another member''s data');
select tests.authenticate_as((select alice from t_ctx));
select throws_ok($$ select ops.forget_user((select alice from t_ctx), 'alice') $$, '42501', null,
  'nor erase themselves through the Data API (operators do, on request)');
select tests.authenticate_as_anon();
select throws_ok($$ select ops.export_user((select alice from t_ctx)) $$, '42501', null, 'anon cannot export');
select throws_ok($$ select ops.redis_erasure_done(1, 0) $$, '42501', null, 'nor complete a Redis erasure');
select tests.clear_authentication();

-- test: export before the erasure, as service_role
select tests.authenticate_as_service_role();
create temp table t_export as select ops.export_user((select alice from t_ctx)) as doc;
select tests.clear_authentication();
select is((select jsonb_array_length(doc -> 'sessions') from t_export), 2, 'export: both sessions');
select is((select doc #>> '{sessions,0,messages,0,content}' from t_export), 'My phone is +250 788 123 456',
  'with their messages');
select is((select jsonb_array_length(doc -> 'usage_events') from t_export), 3, 'her usage rows, not bob''s');
select is((select doc #>> '{stored_answers,0,response,message}' from t_export), 'Your balance is 12,000', 'her stored answers');
select is((select doc #>> '{opt_out_history,0,actor}' from t_export), 'dpo@example.test', 'her opt-outs with their history');

-- test: forget_user as service_role
select tests.authenticate_as_service_role();
create temp table t_erasure as select ops.forget_user((select alice from t_ctx), 'ticket DPO-42') as result;
select tests.clear_authentication();
select is((select (result ->> 'sessions')::int || '/' || (result ->> 'messages')::int || '/' || (result ->> 'usage_rows_pseudonymised')::int
           from t_erasure), '2/4/3', 'the result counts sessions, messages and pseudonymised usage rows');
select is((select count(*)::int from public.agent_sessions s, t_ctx where s.user_id = alice), 0, 'her sessions are gone');
select is((select count(*)::int from public.agent_session_messages m, t_ctx where m.session_id in (s1, s2)), 0, 'with their messages');
select is((select count(*)::int from ops.idempotency_keys k, t_ctx where k.user_id = alice), 0, 'her stored answers are gone');
select is((select count(*)::int from ops.token_reservations r, t_ctx where r.user_id = alice), 0, 'her reservations are gone');
select is((select count(*)::int from ops.rate_limits r, t_ctx where r.bucket_key = 'user:' || alice), 0, 'her user: bucket is gone');
select is((select count(*)::int from public.agent_usage_events e, t_ctx where e.user_id = alice), 0,
  'no usage row names her any more');
select is((select count(distinct e.user_id)::int from public.agent_usage_events e, t_ctx
           where e.request_id like 'er-%-a' and e.org_id = t_ctx.org and e.user_id <> alice), 1,
  'her rows share one pseudonym');
select ok((select bool_and(e.metadata ?| ops.personal_metadata_keys() = false and e.error_message is null
                           and e.session_id is distinct from t_ctx.s1 and e.metadata::text !~ 'KG 11|788|10\.1\.2')
           from public.agent_usage_events e, t_ctx where e.request_id like 'er-%-a'),
  'without IP, client metadata, client request id, error detail or the session id');
select is((select count(*)::int from public.agent_usage_events e, t_ctx
           where e.request_id like 'er-%-b' and e.user_id = bob and e.metadata -> 'client' ->> 'phone' is not null), 3,
  'bob''s rows are untouched');
select is((select sum(total_tokens) from public.agent_usage_events e, t_ctx where e.org_id = t_ctx.org), (select tokens from t_before),
  'billing: the org''s tokens are unchanged');
select is((select jsonb_agg(to_jsonb(r) order by r.org_id) from ops.usage_report(now() - interval '1 hour', now(), null, null, true) r),
  (select report from t_before), 'the usage report by org is unchanged');
select is((select sum(usd) from ops.spend_counters c, t_ctx where c.org_id = t_ctx.org), (select spend from t_before),
  'and the month-to-date spend too');
select is((select requested_by || ' ' || source || ' ' || redis_state || ' ' || (counts ->> 'sessions') from ops.member_erasures m, t_ctx
           where m.user_id = alice), 'ticket DPO-42 operator pending 2', 'the erasure is recorded: who, how, counts');
select ok((select not (to_jsonb(m)::text ~ 'KG 11|788 123|balance') from ops.member_erasures m, t_ctx where m.user_id = alice),
  'without what was erased');
select is((select count(*)::int from ops.redis_erasure_queue q, t_ctx where q.user_id = alice), 1, 'its Redis part is queued');
select is((select jsonb_array_length(ops.export_user(alice) -> 'sessions') + jsonb_array_length(ops.export_user(alice) -> 'usage_events')
           from t_ctx), 0, 'an export after the erasure holds no sessions or usage rows');

-- test: the Redis part is completed once
select ok((select ops.redis_erasure_done((select (result ->> 'erasure_id')::bigint from t_erasure), 2, 'ops')),
  'redis_erasure_done completes the queued erasure');
select is((select redis_state || ' ' || redis_sessions_deleted from ops.member_erasures m, t_ctx where m.user_id = alice), 'done 2',
  'and records it');

-- test: deleting the auth user erases bob; a new account with his id starts with no history
delete from auth.users u using t_ctx where u.id = t_ctx.bob;
select is((select source || ' ' || requested_by from ops.member_erasures m, t_ctx where m.user_id = bob), 'auth_delete auth.users delete',
  'the auth.users delete ran the erasure');
select is((select count(*)::int from public.agent_sessions s, t_ctx where s.user_id = bob or s.id = sb), 0, 'his sessions are gone');
insert into auth.users (id) select bob from t_ctx;
select tests.add_member(org, bob) from t_ctx;
select is((select jsonb_array_length(coalesce(public.agent_begin_turn(p_org_id => org, p_user_id => bob, p_session_id => sb,
             p_load_history => true) -> 'history', '[]'::jsonb)) from t_ctx), 0,
  'a new account with the same id, following up the old session id, gets no history');

select * from finish();
rollback;
