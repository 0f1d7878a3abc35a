-- Alerts can be acknowledged and muted until a time; a muted alert does not
-- re-fire (no new event, nothing forwarded) until the mute ends.
begin;
\ir ../support/pgtap-helpers.psql
select plan(11);

-- setup: a far-future quiet window with a failing success rate
create temp table t_ctx as select gen_random_uuid() as org, timestamptz '2032-02-10 12:00:00+00' as t0;
insert into public.agent_usage_events (request_id, org_id, success, error_code, latency_ms, created_at)
select 'm' || i, (select org from t_ctx), i > 5, case when i <= 5 then 'openai_error' end, 100,
       (select t0 from t_ctx) + make_interval(secs => i * 20)
from generate_series(1, 20) i;

-- test: ack
select is((select ops.check_alerts(t0 + interval '8 minutes') ->> 'raised' from t_ctx)::int, 2, 'the success-rate alert is raised (global and the org''s)');
select is((select (ops.alert_ack(id, 'oncall@example.test', (select t0 from t_ctx) + interval '9 minutes')).acknowledged_by
           from ops.alert_events where kind = 'success_rate' and subject = 'global' and resolved_at is null),
  'oncall@example.test', 'an operator acknowledges it');
select is((select acknowledged_by from ops.open_alerts where kind = 'success_rate' and subject = 'global'), 'oncall@example.test', 'the open alert shows who');
select throws_ok($$ select ops.alert_ack(-1) $$, 'P0002', null, 'acknowledging an unknown alert is an error');

-- test: mute; the alert resolves, the failures come back, nothing re-fires
select ops.alert_mute('success_rate', s, t0 + interval '2 hours', 'known OpenAI incident', 'oncall@example.test',
                      t0 + interval '10 minutes') from t_ctx, unnest(array['global', 'org:' || org]) s;
select is((select ops.check_alerts(t0 + interval '30 minutes') ->> 'resolved' from t_ctx)::int, 2, 'both resolve when they clear');
insert into public.agent_usage_events (request_id, org_id, success, error_code, latency_ms, created_at)
select 'n' || i, (select org from t_ctx), i > 5, case when i <= 5 then 'openai_error' end, 100,
       (select t0 from t_ctx) + interval '40 minutes' + make_interval(secs => i * 20)
from generate_series(1, 20) i;
select is((select ops.check_alerts(t0 + interval '48 minutes') from t_ctx) - 'open', '{"muted": 2, "raised": 0, "resolved": 0}'::jsonb,
  'while muted, the same condition raises nothing (counted as muted)');
select is((select count(*)::int from ops.alert_events where kind = 'success_rate' and resolved_at is null), 0, 'no open event');

-- test: after the mute, it fires again
insert into public.agent_usage_events (request_id, org_id, success, error_code, latency_ms, created_at)
select 'p' || i, (select org from t_ctx), i > 5, case when i <= 5 then 'openai_error' end, 100,
       (select t0 from t_ctx) + interval '3 hours' + make_interval(secs => i * 20)
from generate_series(1, 20) i;
select is((select ops.check_alerts(t0 + interval '3 hours 8 minutes') ->> 'raised' from t_ctx)::int, 2, 'once the mute ends it is raised again');

-- test: validation and audit
select throws_ok($$ select ops.alert_mute('latency', 'global', now() + interval '1 hour') $$, '22023', null, 'an unknown kind is refused');
select throws_ok($$ select ops.alert_mute('budget', 'global', now() - interval '1 hour') $$, '22023', null, 'a mute ends in the future');
select is((select array_agg(action order by id) from ops.policy_audit where actor = 'oncall@example.test'),
  array['alert_ack', 'alert_mute', 'alert_mute'], 'acks and mutes are audited');

select * from finish();
rollback;
