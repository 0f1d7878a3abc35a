-- Alert notifications: one outbox row per notification and destination,
-- written with the alert; claimed under a lease; retried with backoff; failed
-- after the last attempt, which alerts on the other destinations.
begin;
\ir ../support/pgtap-helpers.psql
select plan(26);

-- setup: a quiet far-future day; org a fails each of its 10 requests, org b answers
-- its 590 (98.3% overall)
create temp table t_ctx as
select gen_random_uuid() as a, gen_random_uuid() as b, timestamptz '2033-03-10 12:00:00+00' as t0;
grant select on t_ctx to service_role;
insert into public.agent_usage_events (request_id, org_id, success, error_code, latency_ms, created_at)
select 'o' || i, case when i % 60 = 0 then a else b end, i % 60 <> 0, case when i % 60 = 0 then 'openai_error' end, 100,
       t0 + make_interval(secs => i)
from t_ctx, generate_series(1, 600) i;

-- test: without destinations, alerts are only recorded (and say so)
select tests.authenticate_as_service_role();
select is((select ops.check_alerts(t0 + interval '11 minutes') ->> 'raised' from t_ctx)::int, 1,
  'a tenant failing every request raises its own alert while the global rate holds (590/600)');
select is((select subject from ops.alert_events where kind = 'success_rate' and resolved_at is null),
  (select 'org:' || a from t_ctx), 'the subject is the failing org');
select is((select delivery from ops.open_alerts where kind = 'success_rate'), 'recorded only, no destination',
  'with no destination the open alert says it was only recorded');
select is((select count(*)::int from ops.alert_outbox), 0, 'and nothing is queued');

-- test: the function reports two destinations; a new alert queues one row each
select is(jsonb_array_length((select public.agent_alerts_begin_cycle(array['slack', 'webhook'], 50, 120, t0 + interval '2 hours')
  -> 'claimed' from t_ctx)), 2, 'the resolve of the cleared alert is queued for both destinations and claimed at once');
select is((select array_agg(destination || ':' || state order by destination) from ops.alert_outbox),
  array['slack:resolved', 'webhook:resolved'], 'one row per destination');
select is((select count(distinct message_id)::int from ops.alert_outbox), 2, 'each row has its own webhook-id');
create temp table t_first as select id, message_id, dedup_key from ops.alert_outbox;
select is((select count(*)::int from ops.alert_outbox where leased_until is not null and attempts = 1), 2,
  'claimed rows are leased and their attempt counted');
select is(jsonb_array_length((select public.agent_alerts_begin_cycle(array['slack', 'webhook'], 50, 120, t0 + interval '2 hours 1 minute')
  -> 'claimed' from t_ctx)), 0, 'a second cycle inside the lease claims nothing');

-- test: results: one delivered, one failed and backed off
select is((select public.agent_alerts_record(jsonb_agg(jsonb_build_object(
    'id', id, 'claim_token', claim_token,
    'outcome', case when destination = 'slack' then 'delivered' else 'error' end,
    'status', case when destination = 'slack' then 200 else 503 end)), 30, 3, (select t0 from t_ctx) + interval '2 hours')
  from ops.alert_outbox), '{"pending": 1, "delivered": 1}'::jsonb, 'the record counts delivered and pending rows');
select is((select next_attempt_at - (select t0 from t_ctx) from ops.alert_outbox where destination = 'webhook'),
  interval '2 hours 30 seconds', 'the first retry waits the base (30 s)');
select is((select public.agent_alerts_record(jsonb_build_array(jsonb_build_object('id', id, 'claim_token', gen_random_uuid(),
  'outcome', 'delivered')), 30, 3) from ops.alert_outbox where destination = 'webhook'),
  '{"stale": 1}'::jsonb, 'a result without the row''s claim is ignored');
select is(jsonb_array_length((select public.agent_alerts_begin_cycle(array['slack', 'webhook'], 50, 120, t0 + interval '2 hours 1 minute')
  -> 'claimed' from t_ctx)), 1, 'after the backoff only the webhook row is due again (the delivered one never is)');
select is((select count(*)::int from ops.alert_outbox o join t_first f using (id, message_id, dedup_key)
           where o.destination = 'webhook' and o.claim_token is not null and o.attempts = 2), 1,
  'the retry is the same row: same webhook-id and dedup_key');
select is((select public.agent_alerts_record(jsonb_agg(jsonb_build_object('id', id, 'claim_token', claim_token, 'outcome', 'error',
  'error', 'timeout')), 30, 3, (select t0 from t_ctx) + interval '2 hours 1 minute') from ops.alert_outbox where claim_token is not null),
  '{"pending": 1}'::jsonb, 'second failure: pending');
select is((select next_attempt_at - (select t0 from t_ctx) from ops.alert_outbox where destination = 'webhook'),
  interval '2 hours 2 minutes', 'the second retry waits twice the base (60 s)');

-- test: the last attempt fails: failed, and a delivery_failed alert goes to slack only
select public.agent_alerts_begin_cycle(array['slack', 'webhook'], 50, 120, t0 + interval '2 hours 5 minutes') from t_ctx;
select is((select public.agent_alerts_record(jsonb_agg(jsonb_build_object('id', id, 'claim_token', claim_token, 'outcome', 'error',
  'status', 500)), 30, 3, (select t0 from t_ctx) + interval '2 hours 5 minutes') from ops.alert_outbox where claim_token is not null),
  '{"failed": 1}'::jsonb, 'after max attempts the row is failed');
select is((select subject from ops.open_alerts where kind = 'delivery_failed'), 'destination:webhook',
  'a delivery_failed alert names the destination');
select is((select array_agg(destination) from ops.alert_outbox o join ops.alert_events a on a.id = o.alert_id
           where a.kind = 'delivery_failed'), array['slack'], 'it is queued for the other destinations only');

-- test: budgets warn at 80% before the overrun at 100%
insert into ops.budgets (org_id, monthly_usd) select a, 1 from t_ctx;
insert into ops.spend_counters (org_id, month, usd) select a, date '2033-03-01', 0.85 from t_ctx;
select is((select ops.check_alerts(t0 + interval '3 hours') ->> 'raised' from t_ctx)::int, 1, 'spend at 85% raises one alert');
select is((select state from ops.alert_outbox o join ops.alert_events e on e.id = o.alert_id
           where e.kind = 'budget_warning' and o.destination = 'slack'), 'warning', 'queued as a warning');
update ops.spend_counters set usd = 1.2 where org_id = (select a from t_ctx);
select is((select ops.check_alerts(t0 + interval '3 hours 1 minute') ->> 'raised' from t_ctx)::int, 1,
  'at 120% the overrun is raised (the warning stays open, not notified again)');

-- test: muted, the resolve of an alert whose raise went out is still sent (its incident closes)
select ops.alert_mute('budget', 'org:' || a, t0 + interval '1 day', 'known', 'test', t0 + interval '3 hours 2 minutes') from t_ctx;
update ops.spend_counters set usd = 0.1 where org_id = (select a from t_ctx);
select is((select ops.check_alerts(t0 + interval '3 hours 3 minutes') ->> 'resolved' from t_ctx)::int, 2,
  'the overrun and the warning resolve');
select is((select array_agg(e.kind order by e.kind) from ops.alert_outbox o join ops.alert_events e on e.id = o.alert_id
           where o.state = 'resolved' and o.destination = 'slack' and e.kind like 'budget%'
             and e.subject = (select 'org:' || a from t_ctx)),
  array['budget', 'budget_warning'], 'while muted, both resolves are queued (their raises went out)');

-- test: a test notification goes to one destination
select is((select count(*)::int from ops.alert_test('slack')), 1, 'alert_test queues one row for slack');
select tests.clear_authentication();

-- test: nobody but the service role runs a cycle
select tests.authenticate_as(tests.create_user());
select throws_ok($$ select public.agent_alerts_begin_cycle(array['slack']) $$, '42501', null,
  'a signed-in user cannot run a delivery cycle');
select tests.clear_authentication();

select * from finish();
rollback;
