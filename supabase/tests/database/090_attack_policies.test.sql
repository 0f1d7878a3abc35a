-- Attack tests of issue 10 (tenant policies, quotas, budgets, operator
-- levers, alerts) at the SQL level. Each test asserts the documented
-- behaviour, so it fails while the defect it names exists.
begin;
\ir ../support/pgtap-helpers.psql
select plan(13);

create temp table t_ctx as
select gen_random_uuid() as org, gen_random_uuid() as org2, gen_random_uuid() as org3, gen_random_uuid() as org4,
       tests.create_user() as alice, tests.create_user() as bob, tests.create_user() as carol, tests.create_user() as dave,
       timestamptz '2026-07-10 12:00:00+00' as t0;
select tests.add_member(org, alice), tests.add_member(org2, bob), tests.add_member(org3, carol), tests.add_member(org4, dave) from t_ctx;
grant select on t_ctx to service_role;

create function pg_temp.turn(p_org uuid, p_user uuid, p_request text, p_at timestamptz,
                             p_reserve integer default 10000, p_channel text default 'app') returns jsonb language sql as $$
  select public.agent_begin_turn(p_org_id => p_org, p_user_id => p_user, p_request_id => p_request,
    p_channel => p_channel, p_reserve_tokens => p_reserve, p_model => 'gpt-4.1-mini', p_now => p_at);
$$;
create function pg_temp.bill(p_org uuid, p_user uuid, p_request text, p_at timestamptz,
                             p_prompt integer, p_completion integer, p_model text default 'gpt-4.1-mini') returns void language sql as $$
  select public.agent_log_usage(jsonb_build_object('request_id', p_request, 'org_id', p_org, 'user_id', p_user,
    'model', p_model, 'prompt_tokens', p_prompt, 'completion_tokens', p_completion,
    'total_tokens', p_prompt + p_completion, 'success', true, 'created_at', p_at));
$$;

-- ---------------------------------------------------------------------------
-- test: token quota Retry-After names the time the turn can be admitted, not
-- the first quota that happened to be checked (minute before day).
-- ---------------------------------------------------------------------------
select ops.policy_set(org, null, '{"org_tokens_per_minute": 12000, "org_tokens_per_day": 12000}', 'attack') from t_ctx;
-- Token counters keep only what is in the window ending now: this test runs at now().
create temp table t_now as select now() as n;
select pg_temp.bill(org, alice, 'tq-settled', n, 9000, 1000) from t_ctx, t_now;  -- 10,000 settled, in both windows
create temp table t_tq as
select pg_temp.turn(org, alice, 'tq-1', n + interval '1 second', 3000) -> 'rate_limit' as refusal
from t_ctx, t_now;
select is((select pg_temp.turn(org, alice, 'tq-2', n + interval '1 second'
             + make_interval(secs => (refusal ->> 'retry_after_seconds')::int), 3000) ->> 'outcome'
           from t_ctx, t_tq, t_now), 'ok',
  'token quota: a turn retried after the Retry-After it was given is admitted (both the minute and the day quota full)');

-- ---------------------------------------------------------------------------
-- test: request buckets: Retry-After of a refusal where the user: bucket and
-- a channel: throttle are both full is when both have room.
-- ---------------------------------------------------------------------------
select ops.policy_set(null, 'zzattack', '{"channel_max_requests": 1, "channel_window_seconds": 3600}', 'attack');
select ops.policy_set(org3, null, '{"user_max_requests": 1, "user_window_seconds": 10}', 'attack') from t_ctx;
select pg_temp.turn(org3, carol, 'ch-1', t0, 0, 'zzattack') from t_ctx;
create temp table t_ch as
select (pg_temp.turn(org3, carol, 'ch-2', t0 + interval '1 second', 0, 'zzattack') -> 'rate_limit' ->> 'retry_after_seconds')::int as retry
from t_ctx;
select is((select pg_temp.turn(org3, carol, 'ch-3', t0 + interval '1 second' + make_interval(secs => retry), 0, 'zzattack') ->> 'outcome'
           from t_ctx, t_ch), 'ok',
  'channel throttle: a turn retried after the Retry-After it was given is admitted (user: and channel: buckets both full)');
select ops.policy_clear(null, 'zzattack', 'attack');

-- ---------------------------------------------------------------------------
-- test: a budget switched to enforce counts the turns already in flight
-- (overshoot never more than one turn's worst case).
-- ---------------------------------------------------------------------------
select ops.budget_set(org2, 0.02, 'alert', 'attack') from t_ctx;
select pg_temp.turn(org2, bob, 'fl-' || i, t0, 10000) from t_ctx, generate_series(1, 5) i;  -- 5 x $0.012 in flight
select ops.budget_set(org2, 0.02, 'enforce', 'attack') from t_ctx;
select is((select pg_temp.turn(org2, bob, 'fl-after', t0 + interval '1 second', 10000) ->> 'outcome' from t_ctx), 'budget_exceeded',
  'enforced budget: turns in flight when the mode switched to enforce count against it ($0.06 in flight >= $0.02)');

-- ---------------------------------------------------------------------------
-- test: a usage row never lowers spend or token use (negative counts from an
-- OpenAI-compatible upstream or a backfill).
-- ---------------------------------------------------------------------------
select pg_temp.bill(org3, carol, 'neg-0', t0, 1000, 1000) from t_ctx;
create temp table t_spend as select usd as before from ops.spend_counters, t_ctx where spend_counters.org_id = t_ctx.org3;
select pg_temp.bill(org3, carol, 'neg-1', t0, 10, -100000) from t_ctx;
select cmp_ok((select usd from ops.spend_counters, t_ctx where spend_counters.org_id = t_ctx.org3),
  '>=', (select before from t_spend),
  'a usage row with negative completion tokens does not lower month-to-date spend (no budget headroom from it)');
select ok((select coalesce(min(least(prompt_tokens, completion_tokens, total_tokens)), 0) >= 0
           from public.agent_usage_events where request_id = 'neg-1'),
  'and negative token counts are not stored as such');

-- ---------------------------------------------------------------------------
-- test: an enforced budget does not fail open for a model without a price.
-- ---------------------------------------------------------------------------
select ops.budget_set(org4, 0.01, 'enforce', 'attack') from t_ctx;
select pg_temp.bill(org4, dave, 'unpriced-' || i, t0, 500000, 500000, 'acme-unpriced-model') from t_ctx, generate_series(1, 3) i;
select isnt((select public.agent_begin_turn(p_org_id => org4, p_user_id => dave, p_request_id => 'unpriced-next',
               p_reserve_tokens => 10000, p_model => 'acme-unpriced-model', p_now => t0 + interval '1 minute') ->> 'outcome'
             from t_ctx), 'ok',
  'enforced budget: 3M tokens of an unpriced model later, the next turn is not admitted as if nothing was spent');

-- ---------------------------------------------------------------------------
-- test: alert mutes. A mute the function accepts must suppress the alert.
-- ---------------------------------------------------------------------------
select ops.budget_set(org, 0.000001, 'alert', 'attack') from t_ctx;
select pg_temp.bill(org, alice, 'mute-bill', now(), 1000, 1000) from t_ctx;
create temp table t_mute (result text);
do $$
declare
  v_org uuid := (select org from t_ctx);
begin
  begin
    perform ops.alert_mute('budget', 'org:' || upper(v_org::text), now() + interval '1 day', 'known overrun', 'attack');
  exception when others then
    insert into t_mute values ('refused');
    return;
  end;
  insert into t_mute values (case when (ops.check_alerts() ->> 'raised')::int = 0 then 'muted' else 'raised' end);
end;
$$;
select isnt((select result from t_mute), 'raised',
  'alert mute: a mute given the org id in upper case (as some tools print UUIDs) either suppresses the alert or is refused');
select throws_ok($$ select ops.alert_mute('budget', 'org:------------------------------------', now() + interval '1 day') $$,
  '22023', null, 'alert mute: a subject that is no org id is refused');

-- ---------------------------------------------------------------------------
-- test: the audit trail. Every change of a policy or budget is audited,
-- however it is made, and nobody can write an audit row of their choosing.
-- ---------------------------------------------------------------------------
-- The runbook's own budget SQL (Monitoring and alerts), run as the service role:
select tests.authenticate_as_service_role();
insert into ops.budgets (org_id, monthly_usd, note)
values ((select org2 from t_ctx), 500, 'runbook upsert')
on conflict ((coalesce(org_id, '00000000-0000-0000-0000-000000000000'::uuid))) do update set monthly_usd = excluded.monthly_usd, updated_at = now();
update ops.agent_policies set enabled = false, disabled_message = 'off by hand' where org_id = (select org3 from t_ctx) and channel is null;
select tests.clear_authentication();
select is((select count(*)::int from ops.policy_audit a, t_ctx where a.org_id = t_ctx.org2 and (a.new_value ->> 'monthly_usd')::numeric = 500), 1,
  'audit: the runbook''s budget upsert (insert into ops.budgets ... on conflict) is audited');
select is((select count(*)::int from ops.policy_audit a, t_ctx where a.org_id = t_ctx.org3 and a.new_value ->> 'enabled' = 'false'), 1,
  'audit: switching a tenant off with a direct update of ops.agent_policies is audited');
select tests.authenticate_as_service_role();
select throws_ok($$ insert into ops.policy_audit (actor, action, org_id) values ('ceo@example.test', 'policy_set', null) $$,
  '42501', null, 'audit: the service role cannot forge an audit row');
select tests.clear_authentication();

-- ---------------------------------------------------------------------------
-- test: months are UTC everywhere (enforcement, dashboard, alerts), whatever
-- the session's TimeZone (pg_cron jobs run with the database's).
-- ---------------------------------------------------------------------------
select pg_temp.bill(org2, bob, 'tz-july', timestamptz '2026-07-31 23:00:00+00', 100000, 100000) from t_ctx;
set local timezone = 'America/New_York';
select is((select estimated_usd from ops.month_to_date_spend(timestamptz '2026-08-01 02:00:00+00') s, t_ctx where s.org_id = t_ctx.org2),
  null, 'month-to-date spend at 02:00 UTC on August 1 holds no July spend, as enforcement (UTC) sees it');
reset timezone;

-- ---------------------------------------------------------------------------
-- test: the kill switch's message says where to get help: never blank.
-- ---------------------------------------------------------------------------
create temp table t_blank (message text);
do $$
begin
  begin
    perform ops.switch_off((select org2 from t_ctx), '   ', 'attack');
  exception when others then
    insert into t_blank values ('(refused)');
    return;
  end;
  insert into t_blank select pg_temp.turn(org2, bob, 'blank-msg', t0 + interval '2 days') ->> 'message' from t_ctx;
end;
$$;
select ok((select btrim(coalesce(message, '')) <> '' from t_blank),
  'kill switch: switching off with a blank message still gives users a message (the default), or is refused');

select * from finish();
rollback;
