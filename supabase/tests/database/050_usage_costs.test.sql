-- Usage rows, prices, the cost and health arithmetic.
begin;
\ir ../support/pgtap-helpers.psql
select plan(14);

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
select tests.clear_authentication();
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

-- test: monthly cost counts successful events only, priced by date
select is((select requests from ops.monthly_cost, t_ctx where monthly_cost.org_id = t_ctx.org), 10::bigint,
  'monthly cost counts the 10 successful events');
select is((select estimated_usd from ops.monthly_cost, t_ctx where monthly_cost.org_id = t_ctx.org),
  round(5 * 0.0009 + 5 * (1000 * 0.40 + 500 * 1.60) / 1000000, 6),
  'five events at the old price, five at the new');

-- test: usage report
select is((select requests from ops.usage_report('2026-03-10', '2026-03-11', '1 day', (select org from t_ctx))), 12::bigint,
  'all outcomes are requests');
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
