-- Token quotas and enforced budgets of an org with K = org_bucket_shards > 1:
-- the decision takes one of K admission locks (the first free stripe from
-- pg_backend_pid() % K) instead of the org's one lock, and reads the settled
-- tokens and spend summed over every shard, so turns decided one after the
-- other are exactly as with one row (the concurrent bound is tested in
-- supabase/tests/functions/admission_stripes.test.ts). K = 1 takes the
-- org's one lock, as before.
begin;
\ir ../support/pgtap-helpers.psql
select plan(12);

-- setup: org: K = 4 and 1,000 tokens a minute; org2: K = 4 and an enforced $0.02 budget; org3: K = 1, same quota
create temp table t_ctx as
select gen_random_uuid() as org, gen_random_uuid() as org2, gen_random_uuid() as org3, tests.create_user() as alice,
       now() as t0, pg_backend_pid() as pid;
select tests.add_member(org, alice), tests.add_member(org2, alice), tests.add_member(org3, alice) from t_ctx;
select ops.policy_set(org, null, '{"org_bucket_shards": 4, "org_tokens_per_minute": 1000}', 'test') from t_ctx;
select ops.policy_set(org2, null, '{"org_bucket_shards": 4}', 'test') from t_ctx;
select ops.policy_set(org3, null, '{"org_tokens_per_minute": 1000}', 'test') from t_ctx;
select ops.budget_set(org2, 0.02, 'enforce', 'test') from t_ctx;
create function pg_temp.turn(p_org uuid, p_request text, p_reserve int) returns jsonb language sql as $$
  select public.agent_begin_turn(p_org_id => p_org, p_user_id => alice, p_request_id => p_request,
    p_reserve_tokens => p_reserve, p_model => 'gpt-4.1-mini', p_now => t0) from t_ctx;
$$;
-- Whether this backend holds the transaction-level advisory lock of a key (as agent_begin_turn hashes it).
create function pg_temp.holds(p_key text) returns boolean language sql as $$
  select exists (select 1 from pg_locks l
                 where l.locktype = 'advisory' and l.pid = pg_backend_pid() and l.objsubid = 1
                   and l.classid = ((hashtextextended(p_key, 0) >> 32) & 4294967295)::oid
                   and l.objid = (hashtextextended(p_key, 0) & 4294967295)::oid);
$$;
-- 100 settled tokens of the org's minute on each of the four shards, as four backends settled them.
insert into ops.token_counters (counter_key, shard, slot_ms, slot_ids, slot_tokens)
select 'org:' || t.org || ':minute', s::smallint, 3000, array[(extract(epoch from t.t0) * 1000)::bigint / 3000], array[100::bigint]
from t_ctx t, generate_series(0, 3) s;
-- $0.0195 of org2's month on four shards.
insert into ops.spend_counters (org_id, month, shard, usd, billed_events)
select t.org2, date_trunc('month', t.t0 at time zone 'UTC')::date, s::smallint, x.usd, 1
from t_ctx t, (values (0, 0.01), (1, 0.005), (2, 0.003), (3, 0.0015)) as x (s, usd);

-- test: the token quota counts every shard
select is((select pg_temp.turn(org, 'q1', 600) ->> 'outcome' from t_ctx), 'ok',
  '400 settled on four shards + 600 reserved = 1,000: fits');
create temp table t_refused as select pg_temp.turn(org, 'q2', 1) as r from t_ctx;
select is((select r ->> 'outcome' from t_refused), 'rate_limit', 'one token more does not');
select is((select r -> 'rate_limit' ->> 'remaining' from t_refused), '0', 'nothing remains of the minute');
select is((select count(*)::int from ops.token_reservations where request_id = 'q2'), 0, 'the refused turn reserves nothing');

-- test: the enforced budget counts every shard
select is((select pg_temp.turn(org2, 'b1', 10000) ->> 'outcome' from t_ctx), 'ok',
  '$0.0195 spent on four shards is below $0.02: admitted, reserving $0.012');
select is((select pg_temp.turn(org2, 'b2', 10000) -> 'budget' from t_ctx),
  '{"scope": "org", "budget_usd": 0.02, "spent_usd": 0.0195, "reserved_usd": 0.012}'::jsonb,
  'the next is refused, with the spend summed over the shards');

-- test: the admission lock: one stripe of K, the org's one lock at K = 1
select ok((select pg_temp.holds('agent-chat:admission:org:' || org || '#' || pid % 4) from t_ctx),
  'a turn under K = 4 holds stripe pid % 4 (free: this transaction took it first)');
select ok((select not pg_temp.holds('agent-chat:admission:org:' || org) from t_ctx), 'not the org''s one lock');
select is((select count(*)::int from generate_series(0, 3) s, t_ctx
           where pg_temp.holds('agent-chat:admission:org:' || org || '#' || s)), 1, 'and only one stripe');
select pg_temp.turn(org3, 'k1', 10) from t_ctx;
select ok((select pg_temp.holds('agent-chat:admission:org:' || org3) from t_ctx), 'K = 1: the org''s one lock, as before');
select is((select count(*)::int from generate_series(0, 3) s, t_ctx
           where pg_temp.holds('agent-chat:admission:org:' || org3 || '#' || s)), 0, 'and no stripe');

-- test: denials
select tests.authenticate_as((select alice from t_ctx));
select throws_ok($$ select public.agent_begin_turn(gen_random_uuid(), gen_random_uuid()) $$, '42501', null,
  'a member cannot call agent_begin_turn through the Data API');
select tests.clear_authentication();

select * from finish();
rollback;
