-- Finding "logging off turns the controls off": with the usage log off,
-- agent_settle_usage settles a model call as its row would (reservation,
-- token and spend counters, priced_as) without the row, and a settlement
-- sent twice (a retried write whose outcome was unknown) counts once.
begin;
\ir ../support/pgtap-helpers.psql
select plan(9);

-- setup
create temp table t_ctx as select gen_random_uuid() as org, gen_random_uuid() as usr;
grant select on t_ctx to service_role;
insert into ops.token_reservations (request_id, org_id, user_id, model, tokens, usd, created_at, expires_at)
select 'off-1', org, usr, 'gpt-4.1-mini', 5000, 0.006, now(), now() + interval '10 minutes' from t_ctx;
create temp table t_event as
  select jsonb_build_object('request_id', 'off-1', 'org_id', org, 'user_id', usr, 'model', 'openai/gpt-4.1-mini',
    'prompt_tokens', 1000, 'cached_prompt_tokens', 0, 'completion_tokens', 1000, 'total_tokens', 2000, 'success', true,
    'metadata', jsonb_build_object('requested_model', 'gpt-4.1-mini')) as e
  from t_ctx;
grant select on t_event to service_role;

-- test: the service role settles without a row (service role)
select tests.authenticate_as_service_role();
select lives_ok($$ select public.agent_settle_usage(e) from t_event $$, 'a usage event settles without a row');
select is((select count(*)::int from public.agent_usage_events where request_id = 'off-1'), 0, 'no usage row is written');
select is((select count(*)::int from ops.token_reservations where request_id = 'off-1'), 0, 'the reservation is released');
select is((select usd from ops.spend_counters c, t_ctx where c.org_id = t_ctx.org),
  ops.event_cost_usd('gpt-4.1-mini', now(), 1000, 0, 1000),
  'the spend counter is charged, at the requested model''s price for an unpriced reported name');
select is((select sum(s)::int from ops.token_counters c, t_ctx, unnest(c.slot_tokens) s
           where c.counter_key in ('org:' || t_ctx.org || ':day', 'user:' || t_ctx.usr || ':minute')), 4000,
  'the token counters are charged');
select public.agent_settle_usage(e) from t_event;
select is((select usd from ops.spend_counters c, t_ctx where c.org_id = t_ctx.org),
  ops.event_cost_usd('gpt-4.1-mini', now(), 1000, 0, 1000), 'a settlement sent twice counts once');
select is((select billed_events from ops.spend_counters c, t_ctx where c.org_id = t_ctx.org), 1::bigint, 'one billed event');
select tests.clear_authentication();

-- test: anon and authenticated
select tests.authenticate_as_anon();
select throws_ok($$ select public.agent_settle_usage('{}'::jsonb) $$, '42501', null, 'anon cannot settle');
select tests.clear_authentication();
select tests.authenticate_as((select usr from t_ctx));
select throws_ok($$ select count(*) from ops.settled_requests $$, '42501', null, 'authenticated cannot read the marks');
select tests.clear_authentication();

select * from finish();
rollback;
