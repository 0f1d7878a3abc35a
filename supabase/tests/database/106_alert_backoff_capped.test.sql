-- Finding (adversarial review): the retry delay was base x 2^(attempts-1) uncapped. With
-- AI_AGENT_ALERT_MAX_ATTEMPTS allowed up to 100, a row failing for the ~50th
-- time overflowed interval ('interval out of range'), which aborted the whole
-- agent_alerts_record call: every row of that cycle (delivered ones too) stayed
-- claimed, was claimed again when the lease ran out and sent again, forever.
-- The delay is capped (one day), so the record always completes.
begin;
\ir ../support/pgtap-helpers.psql
select plan(4);

-- setup: two claimed rows of one cycle: one delivered, one failing for the 60th time
create temp table t_ids as
select gen_random_uuid() as tok_ok, gen_random_uuid() as tok_bad, timestamptz '2034-01-01 00:00:00+00' as t0;
grant select on t_ids to service_role;
insert into ops.alert_outbox (state, destination, dedup_key, payload, attempts, next_attempt_at, claim_token, leased_until)
select 'test', d, 'attack2/' || d, '{}'::jsonb, a, t0, tok, t0 + interval '1 hour'
from t_ids, (values ('slack', 1, 'ok'), ('webhook', 60, 'bad')) v (d, a, which)
cross join lateral (select case when which = 'ok' then tok_ok else tok_bad end as tok) x;

-- test: the record of the cycle completes
select tests.authenticate_as_service_role();
select lives_ok($$
  select public.agent_alerts_record(jsonb_build_array(
    jsonb_build_object('id', (select id from ops.alert_outbox where destination = 'slack'), 'claim_token', tok_ok,
                       'outcome', 'delivered', 'status', 200),
    jsonb_build_object('id', (select id from ops.alert_outbox where destination = 'webhook'), 'claim_token', tok_bad,
                       'outcome', 'error', 'status', 503, 'error', 'HTTP 503')), 30, 100, t0)
  from t_ids
$$, 'a 60th failure with 100 attempts allowed does not abort the cycle''s record');
select is((select status from ops.alert_outbox where destination = 'slack'), 'delivered',
  'the delivered row of the same cycle is recorded (never sent again)');
select is((select status || ' ' || (claim_token is null) from ops.alert_outbox where destination = 'webhook'), 'pending true',
  'the failing row is pending again, its claim released');
select is((select next_attempt_at - t0 from ops.alert_outbox, t_ids where destination = 'webhook'), interval '1 day',
  'its delay is capped at one day');

select * from finish();
rollback;
