-- Usage rows, prices, the cost and health arithmetic.
begin;
\ir ../support/pgtap-helpers.psql
select plan(19);

-- setup
create temp table t_ctx as select gen_random_uuid() as org, gen_random_uuid() as org2;
grant select on t_ctx to service_role;

-- test: the single insert works for every outcome, with or without a stored session (service role)
select tests.authenticate_as_service_role();
select lives_ok($$
  select public.agent_log_usage(jsonb_build_object(
    'request_id', 'r-' || i, 'org_id', (select org from t_ctx), 'user_id', gen_random_uuid(),
    'session_id', gen_random_uuid(), 'channel', 'whatsapp', 'model', 'gpt-4.1-mini-2025-04-14',
    'prompt_tokens', 1000, 'cached_prompt_tokens', 0, 'completion_tokens', 500, 'total_tokens', 1500,
    'latency_ms', i * 10, 'success', true, 'created_at', '2026-03-10 10:00:00+00'::timestamptz + make_interval(mins => i)))
  from generate_series(1, 10) i
$$, 'usage rows insert for sessions that exist nowhere (Redis store)');
select lives_ok($$
  select public.agent_log_usage(jsonb_build_object('request_id', 'bad', 'org_id', (select org from t_ctx),
    'success', false, 'error_code', 'openai_error', 'error_message', repeat('x', 5000), 'latency_ms', 30000,
    'created_at', '2026-03-10 10:05:00+00'))
$$, 'a failure row with an oversized message inserts (truncated)');
select public.agent_log_usage(jsonb_build_object('request_id', 'rl', 'org_id', (select org from t_ctx),
  'success', false, 'error_code', 'rate_limit', 'latency_ms', 3, 'created_at', '2026-03-10 10:06:00+00'));
-- 7 more rate-limit refusals, counted into one aggregated row
select public.agent_log_usage(jsonb_build_object('request_id', 'rl-more', 'org_id', (select org from t_ctx),
  'success', false, 'error_code', 'rate_limit', 'latency_ms', 0, 'event_count', 7,
  'metadata', jsonb_build_object('aggregated', true, 'first_request_id', 'rl'), 'created_at', '2026-03-10 10:07:00+00'));
-- a billed call that did not succeed: the client went away after the model answered
select public.agent_log_usage(jsonb_build_object('request_id', 'gone', 'org_id', (select org from t_ctx),
  'model', 'gpt-4.1-mini', 'prompt_tokens', 1000, 'completion_tokens', 500, 'total_tokens', 1500,
  'success', false, 'error_code', 'client_closed', 'latency_ms', 900, 'created_at', '2026-03-10 10:08:00+00'));
select tests.clear_authentication();
select is((select event_count from public.agent_usage_events where request_id = 'rl'), 1, 'event_count defaults to 1');
select is((select event_count from public.agent_usage_events where request_id = 'rl-more'), 7,
  'an aggregated row keeps the count it stands for');
select throws_ok($$ insert into public.agent_usage_events (success, event_count) values (false, 0) $$, '23514', null,
  'event_count is at least 1');
select is((select length(error_message) from public.agent_usage_events where request_id = 'bad'), 2000,
  'error_message is capped at 2000 characters');

-- test: prices
select is(ops.event_cost_usd('gpt-4.1-mini-2025-04-14', now(), 1000000, 0, 1000000), 1.50::numeric,
  '1M in + 1M out of gpt-4.1-mini = $0.30 + $1.20 (dated model name matched by prefix)');
select is(ops.event_cost_usd('gpt-4.1-mini', now(), 1000, 0, 500), 0.0009::numeric, '1000 in + 500 out = $0.0009');
select is(ops.event_cost_usd('some-other-model', now(), 1000, 0, 500), null, 'an unpriced model costs NULL, not $0');
insert into ops.model_prices (model, effective_from, input_usd_per_million, cached_input_usd_per_million, output_usd_per_million)
values ('gpt-4.1-mini', '2026-03-10 10:05:30+00', 0.40, 0.10, 1.60);
select is(ops.event_cost_usd('gpt-4.1-mini', '2026-03-10 10:06:00+00', 1000, 400, 500), 0.00108::numeric,
  'a newer price applies from its date: 600*0.40 + 400*0.10 + 500*1.60 per 1M');

-- test: monthly cost counts every billed event (tokens), priced by date
select is((select sum(requests) from ops.monthly_cost, t_ctx where monthly_cost.org_id = t_ctx.org), 11::numeric,
  'monthly cost counts the 10 answered events and the billed client_closed one, no refusal');
select is((select sum(succeeded) from ops.monthly_cost, t_ctx where monthly_cost.org_id = t_ctx.org), 10::numeric,
  'of which 10 succeeded');
select is((select sum(estimated_usd) from ops.monthly_cost, t_ctx where monthly_cost.org_id = t_ctx.org),
  round(5 * 0.0009 + 5 * (1000 * 0.40 + 500 * 1.60) / 1000000, 6) + round((1000 * 0.40 + 500 * 1.60) / 1000000, 6),
  'five answered events at the old price, five and the billed failure at the new');
select is((select estimated_usd from ops.month_to_date_spend('2026-03-31 00:00:00+00') s, t_ctx where s.org_id = t_ctx.org),
  round(5 * 0.0009 + 6 * (1000 * 0.40 + 500 * 1.60) / 1000000, 6),
  'month-to-date spend counts the billed failure too');

-- test: usage report
select is((select requests from ops.usage_report('2026-03-10', '2026-03-11', '1 day', (select org from t_ctx))), 20::bigint,
  'all outcomes are requests, an aggregated row for its event_count (10 + 1 + 1 + 7 + 1)');
select is((select success_rate from ops.usage_report('2026-03-10', '2026-03-11', '1 day', (select org from t_ctx))), round(10 / 11.0, 4),
  'success rate = answered / served; the rate-limit refusal does not count against it');
select is((select latency_p50_ms from ops.usage_report('2026-03-10', '2026-03-11', '1 day', (select org from t_ctx))), 55.0,
  'p50 latency of the answered requests (10..100 ms)');
select is((select latency_p99_ms from ops.usage_report('2026-03-10', '2026-03-11', '1 day', (select org from t_ctx))), 99.1,
  'p99 latency');
select is((select count(*)::int from ops.usage_report('2026-03-10', '2026-03-11', '1 day', (select org2 from t_ctx))), 0,
  'another org sees no rows of this one');

select * from finish();
rollback;
