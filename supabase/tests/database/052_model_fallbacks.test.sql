-- Model fallbacks and breakers as the usage rows record them: answers per
-- model with the share answered by fallbacks, breaker transitions per upstream.
begin;
\ir ../support/pgtap-helpers.psql
select plan(10);

-- setup
create temp table t_ctx as select gen_random_uuid() as org;
grant select on t_ctx to service_role;
select tests.authenticate_as_service_role();
-- 3 answers by the primary alone, 1 by the backup after the primary failed
-- (opening its breaker), 1 by the backup with the primary skipped, then the
-- probe that closed it; and a request every breaker refused.
select public.agent_log_usage(jsonb_build_object('request_id', 'p-' || i, 'org_id', (select org from t_ctx),
  'model', 'primary-2025', 'prompt_tokens', 10, 'completion_tokens', 5, 'total_tokens', 15, 'latency_ms', 100,
  'success', true, 'created_at', '2026-05-01 10:00:00+00'::timestamptz + make_interval(mins => i)))
from generate_series(1, 3) i;
select public.agent_log_usage(jsonb_build_object('request_id', 'fb-1', 'org_id', (select org from t_ctx),
  'model', 'backup-2025', 'prompt_tokens', 10, 'completion_tokens', 5, 'total_tokens', 15, 'latency_ms', 300,
  'success', true, 'created_at', '2026-05-01 11:00:00+00',
  'metadata', jsonb_build_object('model_attempts', jsonb_build_array(
    jsonb_build_object('model', 'primary', 'upstream', 'primary@api', 'outcome', 'failed:500', 'billed', 'none', 'breaker', 'opened'),
    jsonb_build_object('model', 'backup-2025', 'upstream', 'backup@alt', 'outcome', 'answered', 'billed', 'reported')))));
select public.agent_log_usage(jsonb_build_object('request_id', 'fb-2', 'org_id', (select org from t_ctx),
  'model', 'backup-2025', 'prompt_tokens', 10, 'completion_tokens', 5, 'total_tokens', 15, 'latency_ms', 120,
  'success', true, 'created_at', '2026-05-01 11:01:00+00',
  'metadata', jsonb_build_object('model_attempts', jsonb_build_array(
    jsonb_build_object('model', 'primary', 'upstream', 'primary@api', 'outcome', 'skipped:breaker_open', 'billed', 'none'),
    jsonb_build_object('model', 'backup-2025', 'upstream', 'backup@alt', 'outcome', 'answered', 'billed', 'reported')))));
select public.agent_log_usage(jsonb_build_object('request_id', 'none', 'org_id', (select org from t_ctx),
  'model', 'primary', 'latency_ms', 2, 'success', false, 'error_code', 'upstream_unavailable',
  'created_at', '2026-05-01 11:02:00+00',
  'metadata', jsonb_build_object('model_attempts', jsonb_build_array(
    jsonb_build_object('model', 'primary', 'upstream', 'primary@api', 'outcome', 'skipped:breaker_open', 'billed', 'none'),
    jsonb_build_object('model', 'backup', 'upstream', 'backup@alt', 'outcome', 'skipped:breaker_open', 'billed', 'none')))));

-- test: answers per model and the fallback share (service role)
select results_eq($$
  select model, answers, fallback_answers, day_answers, day_fallback_share
  from ops.model_answer_report('2026-05-01', '2026-05-02')
$$, $$ values ('primary-2025'::text, 3::bigint, 0::bigint, 5::bigint, 0.4000::numeric),
             ('backup-2025', 2, 2, 5, 0.4000) $$,
  'answers per model, two of five answered by the fallback');
select is((select count(*) from ops.model_answer_report('2026-05-02', '2026-05-03')), 0::bigint,
  'only the period asked for');
select ok(ops.is_served_outcome(false, 'upstream_unavailable'), 'upstream_unavailable counts against the success rate');

-- test: breaker transitions per upstream, from every isolate's rows
select results_eq($$
  select upstream, last_opened_at, skipped_recently, failed_recently, likely_state
  from ops.upstream_breaker_report('2026-05-01 11:03:00+00', '24 hours', '5 minutes')
$$, $$ values ('backup@alt'::text, null::timestamptz, 1::bigint, 0::bigint, 'open (in some isolates)'::text),
             ('primary@api', '2026-05-01 11:00:00+00', 2, 1, 'open (in some isolates)') $$,
  'opened, skipped: open in some isolates');
select public.agent_log_usage(jsonb_build_object('request_id', 'probe', 'org_id', (select org from t_ctx),
  'model', 'primary-2025', 'prompt_tokens', 10, 'completion_tokens', 5, 'total_tokens', 15, 'latency_ms', 90,
  'success', true, 'created_at', '2026-05-01 11:30:00+00',
  'metadata', jsonb_build_object('model_attempts', jsonb_build_array(
    jsonb_build_object('model', 'primary-2025', 'upstream', 'primary@api', 'outcome', 'answered', 'billed', 'reported', 'breaker', 'closed')))));
select is((select likely_state from ops.upstream_breaker_report('2026-05-01 11:31:00+00') where upstream = 'primary@api'),
  'closed', 'a probe that closed it: closed');
select is((select last_closed_at from ops.upstream_breaker_report('2026-05-01 11:31:00+00') where upstream = 'primary@api'),
  '2026-05-01 11:30:00+00'::timestamptz, 'when it closed');
select is((select count(*) from ops.model_answer_report('2026-05-01', '2026-05-02') where model = 'primary-2025' and answers = 4),
  1::bigint, 'the probe''s answer is the primary''s, not a fallback''s');
select tests.clear_authentication();

-- test: denials (anon, authenticated)
select tests.authenticate_as_anon();
select throws_ok($$ select * from ops.upstream_breakers $$, '42501', null, 'anon cannot read breakers');
select tests.clear_authentication();
select tests.authenticate_as(gen_random_uuid());
select throws_ok($$ select * from ops.model_answer_report(now() - interval '1 day', now()) $$, '42501', null,
  'a member cannot read the model report');
select throws_ok($$ select * from ops.model_answers $$, '42501', null, 'a member cannot read the view');
select tests.clear_authentication();

select * from finish();
rollback;
