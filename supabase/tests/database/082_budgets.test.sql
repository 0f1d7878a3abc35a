-- Enforced budgets: in enforce mode a tenant (or everyone, for the global
-- budget) is refused once month-to-date spend plus open reservations reach
-- the budget; alert mode never refuses. Spend comes from every billed row.
begin;
\ir ../support/pgtap-helpers.psql
select plan(18);

-- setup: gpt-4.1-mini at $0.30 in / $1.20 out per 1M: 10,000 reserved tokens hold $0.012
create temp table t_ctx as
select gen_random_uuid() as org, gen_random_uuid() as org2, tests.create_user() as alice, tests.create_user() as bob,
       timestamptz '2026-08-10 12:00:00+00' as t0;
select tests.add_member(org, alice), tests.add_member(org2, bob) from t_ctx;
create function pg_temp.turn(p_org uuid, p_user uuid, p_request text, p_at timestamptz) returns jsonb language sql as $$
  select public.agent_begin_turn(p_org_id => p_org, p_user_id => p_user, p_request_id => p_request,
    p_reserve_tokens => 10000, p_model => 'gpt-4.1-mini', p_now => p_at);
$$;
create function pg_temp.bill(p_org uuid, p_user uuid, p_request text, p_at timestamptz, p_success boolean) returns void language sql as $$
  select public.agent_log_usage(jsonb_build_object('request_id', p_request, 'org_id', p_org, 'user_id', p_user,
    'model', 'gpt-4.1-mini', 'prompt_tokens', 10000, 'completion_tokens', 5000, 'total_tokens', 15000,
    'success', p_success, 'error_code', case when not p_success then 'client_closed' end, 'created_at', p_at));
$$;

-- test: alert mode never refuses
select ops.budget_set(org, 0.02, 'alert', 'finance@example.test') from t_ctx;
select pg_temp.bill(org, alice, 'b0', t0, true) from t_ctx;  -- $0.009
select pg_temp.bill(org, alice, 'b1', t0, false) from t_ctx; -- $0.009, billed although the client went away
select is((select usd from ops.spend_counters, t_ctx where spend_counters.org_id = t_ctx.org), 0.018::numeric,
  'every billed row adds to the month''s spend (a client_closed one too)');
select is((select pg_temp.turn(org, alice, 'r1', t0 + interval '1 minute') ->> 'outcome' from t_ctx), 'ok',
  'in alert mode a turn is admitted whatever the spend');
select is((select count(*)::int from ops.token_reservations where request_id = 'r1'), 1,
  'and reserves its worst case all the same, so that enforcing the budget counts the turns in flight');
-- r1 ends without tokens (its usage row settles the reservation)
select public.agent_log_usage(jsonb_build_object('request_id', 'r1', 'org_id', org, 'user_id', alice, 'model', 'gpt-4.1-mini',
  'success', false, 'error_code', 'openai_error', 'created_at', t0 + interval '1 minute'))
from t_ctx;

-- test: enforce mode
select ops.budget_set(org, 0.02, 'enforce', 'finance@example.test') from t_ctx;
select is((select pg_temp.turn(org, alice, 'r2', t0 + interval '2 minutes') ->> 'outcome' from t_ctx), 'ok',
  '$0.018 spent is below the $0.02 budget: admitted, reserving $0.012');
select is((select pg_temp.turn(org, alice, 'r3', t0 + interval '2 minutes') ->> 'outcome' from t_ctx), 'budget_exceeded',
  '$0.018 spent + $0.012 reserved reach the budget: refused');
select is((select pg_temp.turn(org, alice, 'r3', t0 + interval '2 minutes') -> 'budget' from t_ctx),
  '{"scope": "org", "budget_usd": 0.02, "spent_usd": 0.018, "reserved_usd": 0.012}'::jsonb, 'saying which budget and why');
select is((select count(*)::int from ops.token_reservations where request_id = 'r3'), 0, 'a refused turn reserves nothing');
select is((select pg_temp.turn(org2, bob, 'o2', t0 + interval '2 minutes') ->> 'outcome' from t_ctx), 'ok', 'another tenant is served');
-- r2 settles for less than it reserved: $0.0003 + $0.0012 = $0.0015 (1,000 in, 1,000 out)
select public.agent_log_usage(jsonb_build_object('request_id', 'r2', 'org_id', org, 'user_id', alice, 'model', 'gpt-4.1-mini',
  'prompt_tokens', 1000, 'completion_tokens', 1000, 'total_tokens', 2000, 'success', true, 'created_at', t0 + interval '3 minutes'))
from t_ctx;
select is((select pg_temp.turn(org, alice, 'r4', t0 + interval '4 minutes') ->> 'outcome' from t_ctx), 'ok',
  '$0.0195 spent, nothing reserved: below the budget, one more turn');
select is((select pg_temp.turn(org, alice, 'r5', t0 + interval '4 minutes') ->> 'outcome' from t_ctx), 'budget_exceeded',
  'which may overshoot it by at most its own worst case');
select is((select pg_temp.turn(org, alice, 'r6', t0 + interval '1 month') ->> 'outcome' from t_ctx), 'ok',
  'a new month starts from zero');

-- test: the global budget
select ops.budget_set(null, 0.03, 'enforce', 'finance@example.test');
select is((select pg_temp.turn(org2, bob, 'g1', t0 + interval '5 minutes') ->> 'outcome' from t_ctx), 'budget_exceeded',
  'the global budget counts every tenant''s spend and open reservations ($0.0195 + 2 x $0.012 >= $0.03)');
select is((select pg_temp.turn(org2, bob, 'g1', t0 + interval '5 minutes') -> 'budget' ->> 'scope' from t_ctx), 'global',
  'and says it is the global one');

-- test: the per-org dashboard
select is((select budget_mode || ' ' || budget_usd::float8 from ops.org_dashboard d, t_ctx where d.org_id = t_ctx.org), 'enforce 0.02',
  'ops.org_dashboard shows the tenant''s budget and mode');
select pg_temp.turn(org, alice, 'now-1', now()) from t_ctx;
select is((select reserved_tokens::bigint from ops.org_dashboard d, t_ctx where d.org_id = t_ctx.org), 10000::bigint,
  'and its reservations open now (the earlier ones have expired)');

-- test: validation and audit
select throws_ok($$ select ops.budget_set(null, 10, 'block') $$, '22023', null, 'mode is alert or enforce');
select throws_ok($$ select ops.budget_set(null, -1) $$, '22023', null, 'a budget is a positive amount');
select is((select count(*)::int from ops.policy_audit a, t_ctx where a.action = 'budget_set' and a.org_id = t_ctx.org), 2,
  'every budget change is audited');

select * from finish();
rollback;
