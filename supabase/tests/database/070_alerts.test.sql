-- Alerts: raised once, refreshed while true, resolved when clear, across a moving clock.
begin;
\ir ../support/pgtap-helpers.psql
select plan(14);

-- setup: a quiet far-future day, so no other row falls in these windows
create temp table t_ctx as select gen_random_uuid() as org, timestamptz '2031-01-15 12:00:00+00' as t0;
grant select on t_ctx to service_role;
-- 20 served requests in 12:00-12:10, 3 of them failed: 85% success
insert into public.agent_usage_events (request_id, org_id, success, error_code, latency_ms, created_at, model, prompt_tokens, completion_tokens, total_tokens)
select 'a' || i, (select org from t_ctx), i > 3, case when i <= 3 then 'openai_error' end, 100,
       (select t0 from t_ctx) + make_interval(secs => i * 30), 'gpt-4.1-mini', 1000, 1000, 2000
from generate_series(1, 20) i;
-- and 50 refusals, which never count against the success rate
insert into public.agent_usage_events (request_id, org_id, success, error_code, latency_ms, created_at)
select 'r' || i, (select org from t_ctx), false, 'rate_limit', 1, (select t0 from t_ctx) + interval '1 minute'
from generate_series(1, 50) i;
-- nor does a billed client_closed row
insert into public.agent_usage_events (request_id, org_id, success, error_code, latency_ms, created_at, model, prompt_tokens, completion_tokens, total_tokens)
select 'gone', org, false, 'client_closed', 400, t0 + interval '2 minutes', 'gpt-4.1-mini', 1000, 1000, 2000 from t_ctx;

-- test: raised once (service role)
select tests.authenticate_as_service_role();
select is((select ops.check_alerts(t0 + interval '11 minutes') ->> 'raised' from t_ctx)::int, 2,
  'the success-rate alert is raised, globally and for the one org');
select is((select ops.check_alerts(t0 + interval '12 minutes') ->> 'raised' from t_ctx)::int, 0, 'and not raised again while it holds');
select is((select count(*)::int from ops.alert_events where kind = 'success_rate' and resolved_at is null and subject = 'global'), 1, 'one open global event');
select is((select observed from ops.alert_events where kind = 'success_rate' and resolved_at is null and subject = 'global'), 0.85, 'observed 85%');
select is((select (details ->> 'served')::int from ops.alert_events where kind = 'success_rate' and resolved_at is null and subject = 'global'), 20,
  'served counts answered and failed calls, not the client_closed one');
select is((select details -> 'failures_by_code' ->> 'openai_error' from ops.alert_events where kind = 'success_rate' and subject = 'global'), '3',
  'details say which codes failed');

-- test: resolved when the window moves past the failures
select is((select ops.check_alerts(t0 + interval '26 minutes') ->> 'resolved' from t_ctx)::int, 2, 'both resolved once the failures leave the window');
select is((select count(*)::int from ops.alert_events where kind = 'success_rate' and resolved_at is null), 0, 'resolved_at is set');

-- test: budget alerts
insert into ops.budgets (org_id, monthly_usd) select org, 0.01 from t_ctx;
select is((select ops.check_alerts(t0 + interval '30 minutes') ->> 'raised' from t_ctx)::int, 2,
  'spend of 21 billed calls x (1000 in + 1000 out) is over a $0.01 budget (the overrun and its early warning)');
select is((select observed from ops.open_alerts where kind = 'budget'), 21 * 0.0015,
  'every billed row counts: 17 answered, 3 failed with tokens and the client_closed one, $0.0015 each');
select is((select subject from ops.open_alerts where kind = 'budget'), (select 'org:' || org from t_ctx), 'named by org');
update ops.budgets set monthly_usd = 100 where org_id = (select org from t_ctx);
select is((select ops.check_alerts(t0 + interval '31 minutes') ->> 'resolved' from t_ctx)::int, 2, 'raising the budget resolves it and its warning');
select tests.clear_authentication();

-- test: schedules exist where pg_cron does (cron.job is named in a string,
-- so this file also parses and passes on a database without pg_cron)
select case when exists (select 1 from pg_extension where extname = 'pg_cron')
  then results_eq(
    $$select format('%s %s', jobname, schedule) collate "default" from cron.job where jobname like 'agent-chat-%' order by jobname$$,
    $$values ('agent-chat-autoshard * * * * *'), ('agent-chat-check-alerts * * * * *'), ('agent-chat-purge-expired 17 3 * * *'),
             ('agent-chat-usage-partitions 7 * * * *'), ('agent-chat-usage-rollups * * * * *')$$,
    'pg_cron runs the hot-tenant sharding, the alert check and the usage rollup every minute, makes usage partitions hourly, purges nightly')
  else skip('pg_cron is not installed', 1)
end;

-- test: callers without the service role cannot run the check
select tests.authenticate_as_anon();
select throws_ok($$ select ops.check_alerts() $$, '42501', null, 'anon cannot run the alert check');

select * from finish();
rollback;
