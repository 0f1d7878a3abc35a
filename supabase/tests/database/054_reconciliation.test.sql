-- Reconciliation: ops.provider_usage_import sums an export per day and
-- model (a re-import replaces it); ops.usage_reconciliation lines metered
-- rows up with it. Service role only.
begin;
\ir ../support/pgtap-helpers.psql
select plan(7);

-- setup
create temp table t_ctx as select 'recon-' || left(gen_random_uuid()::text, 8) as model;
grant select on t_ctx to service_role;

-- test: import and compare (service role)
select tests.authenticate_as_service_role();
select public.agent_log_usage(jsonb_build_object('request_id', model || '-1', 'org_id', gen_random_uuid(),
  'model', model, 'prompt_tokens', 100, 'completion_tokens', 50, 'total_tokens', 150, 'latency_ms', 1,
  'success', true, 'created_at', '2026-04-01 12:00:00+00')) from t_ctx;
select is((select ops.provider_usage_import(jsonb_build_array(
    jsonb_build_object('day', '2026-04-01', 'model', model, 'input_tokens', 60, 'output_tokens', 20),
    jsonb_build_object('day', '2026-04-01', 'model', model, 'input_tokens', 40, 'output_tokens', 20)), 'test')
  from t_ctx), 1, 'rows of one day and model are summed into one');
select is((select token_difference from ops.usage_reconciliation('2026-04-01', '2026-04-01') r, t_ctx
           where r.model = t_ctx.model), 10::bigint, 'metered 150 tokens, billed 140: 10 more metered');
select is((select ops.provider_usage_import(jsonb_build_array(
    jsonb_build_object('day', '2026-04-01', 'model', model, 'input_tokens', 100, 'output_tokens', 50)), 'test')
  from t_ctx), 1, 'a re-import');
select is((select token_difference from ops.usage_reconciliation('2026-04-01', '2026-04-01') r, t_ctx
           where r.model = t_ctx.model), 0::bigint, 'replaces the day: the bill is proven');
select throws_ok($$ select ops.provider_usage_import('{}'::jsonb) $$, '22023', null, 'rows must be an array');
select tests.clear_authentication();

-- test: anon and authenticated
select tests.authenticate_as_anon();
select throws_ok($$ select * from ops.usage_reconciliation('2026-04-01', '2026-04-01') $$, '42501', null,
  'anon cannot reconcile');
select tests.clear_authentication();
select tests.authenticate_as(gen_random_uuid());
select throws_ok($$ select ops.provider_usage_import('[]'::jsonb) $$, '42501', null,
  'authenticated cannot import');
select tests.clear_authentication();

select * from finish();
rollback;
