-- Finding "model names": a usage row whose reported model has no price is
-- charged at the requested model's price and says so (metadata.priced_as);
-- the unpriced name shows in ops.monthly_cost and raises unpriced_model.
begin;
\ir ../support/pgtap-helpers.psql
select plan(10);

-- setup: gpt-4.1-mini at $0.30 in / $1.20 out per 1M (the seeded price)
create temp table t_ctx as select gen_random_uuid() as org, gen_random_uuid() as usr, now() as t0;
grant select on t_ctx to service_role;
create temp table t_price as
  select ops.event_cost_usd('gpt-4.1-mini', now(), 1000, 0, 1000) as usd;
grant select on t_price to service_role;

-- test: the service role logs what a gateway reported (service role)
select tests.authenticate_as_service_role();
select public.agent_log_usage(jsonb_build_object(
  'request_id', 'gw-1', 'org_id', org, 'user_id', usr, 'model', 'openai/gpt-4.1-mini',
  'prompt_tokens', 1000, 'completion_tokens', 1000, 'total_tokens', 2000, 'latency_ms', 10, 'success', true,
  'metadata', jsonb_build_object('requested_model', 'gpt-4.1-mini'))) from t_ctx;
-- a priced reported name keeps its own price; no requested model and no price: $0, visible
select public.agent_log_usage(jsonb_build_object(
  'request_id', 'gw-2', 'org_id', org, 'user_id', usr, 'model', 'gpt-4.1-mini-2025-04-14',
  'prompt_tokens', 1000, 'completion_tokens', 1000, 'total_tokens', 2000, 'latency_ms', 10, 'success', true,
  'metadata', jsonb_build_object('requested_model', 'gpt-4.1-mini'))) from t_ctx;
select public.agent_log_usage(jsonb_build_object(
  'request_id', 'gw-3', 'org_id', org, 'user_id', usr, 'model', 'acme/unknown',
  'prompt_tokens', 1000, 'completion_tokens', 1000, 'total_tokens', 2000, 'latency_ms', 10, 'success', true,
  'metadata', jsonb_build_object('requested_model', 'acme-also-unpriced'))) from t_ctx;

select is((select metadata ->> 'priced_as' from public.agent_usage_events where request_id = 'gw-1'), 'gpt-4.1-mini',
  'an unpriced reported name is priced as the requested model, and the row says so');
select is((select model from public.agent_usage_events where request_id = 'gw-1'), 'openai/gpt-4.1-mini',
  'the reported name is kept');
select ok((select not (metadata ? 'priced_as') from public.agent_usage_events where request_id = 'gw-2'),
  'a reported name with a price is priced as itself');
select ok((select not (metadata ? 'priced_as') from public.agent_usage_events where request_id = 'gw-3'),
  'no priced_as when the requested model has no price either');
select is((select usd from ops.spend_counters c, t_ctx where c.org_id = t_ctx.org), (select 2 * usd from t_price),
  'the spend counter charges the unpriced name at the requested price (gw-1 + gw-2), not $0');
select is((select estimated_usd from ops.monthly_cost m, t_ctx where m.org_id = t_ctx.org and m.model = 'openai/gpt-4.1-mini'),
  (select round(usd, 6) from t_price), 'ops.monthly_cost shows the unpriced name at the price charged');
select is((select unpriced_events from ops.monthly_cost m, t_ctx where m.org_id = t_ctx.org and m.model = 'acme/unknown'),
  1::bigint, 'a row neither name prices is counted as unpriced');

select is((select array_agg(subject order by subject) from ops.evaluate_alerts(now() + interval '1 second') where kind = 'unpriced_model'),
  array['model:acme/unknown', 'model:openai/gpt-4.1-mini'], 'each unpriced reported name raises an unpriced_model alert');
select is((select details ->> 'priced_as' from ops.evaluate_alerts(now() + interval '1 second') where subject = 'model:openai/gpt-4.1-mini'),
  'gpt-4.1-mini', 'the alert says what it was charged as');
select lives_ok($$ select ops.alert_mute('unpriced_model', 'model:acme/unknown', now() + interval '1 day', 'pricing it', 'test') $$,
  'an operator can mute one unpriced name');
select tests.clear_authentication();

select * from finish();
rollback;
