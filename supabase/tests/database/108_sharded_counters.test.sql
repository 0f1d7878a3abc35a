-- A busy org's token and spend counters are K rows (org_bucket_shards = K):
-- a settlement writes the org's rows on shard pg_backend_pid() % K, the
-- user's on shard 0; every reader sums all the rows of a key, whatever K is
-- now, so a K changed mid-month loses and doubles nothing; a rebuild folds
-- the shards into one row; erasure removes every shard of the member's
-- counters. Rows of other shards are written here as the other backends of
-- a busy org would have written them. Only service_role reads the counters.
begin;
\ir ../support/pgtap-helpers.psql
select plan(21);

-- setup: an org with K = 4, alice a member; gpt-4.1-mini at $0.30 in / $1.20 out per 1M
create temp table t_ctx as
select gen_random_uuid() as org, tests.create_user() as alice, now() as t0,
       date_trunc('month', now() at time zone 'UTC')::date as month, pg_backend_pid() as pid;
select tests.add_member(org, alice) from t_ctx;
select ops.policy_set(org, null, '{"org_bucket_shards": 4}', 'test') from t_ctx;
create function pg_temp.bill(p_request text, p_tokens int) returns void language sql as $$
  select public.agent_log_usage(jsonb_build_object('request_id', p_request, 'org_id', org, 'user_id', alice,
    'model', 'gpt-4.1-mini', 'prompt_tokens', p_tokens, 'completion_tokens', 0, 'total_tokens', p_tokens,
    'success', true, 'created_at', t0)) from t_ctx;
$$;
-- The org's spend this month, summed over its rows, straight from the table.
create function pg_temp.spend_rows() returns numeric language sql as $$
  select sum(c.usd) from ops.spend_counters c, t_ctx where c.org_id = t_ctx.org and c.month = t_ctx.month;
$$;

-- test: a settlement under K = 4 writes the org's shard of this backend, the user's shard 0
select pg_temp.bill('s1', 1000);
select is((select array_agg(distinct c.shard) from ops.token_counters c, t_ctx where c.counter_key like 'org:' || org || ':%'),
  (select array[(pid % 4)::smallint] from t_ctx), 'the org''s token counters are on shard pid % 4');
select is((select array_agg(c.shard) from ops.spend_counters c, t_ctx where c.org_id = t_ctx.org),
  (select array[(pid % 4)::smallint] from t_ctx), 'and its spend counter');
select is((select array_agg(distinct c.shard) from ops.token_counters c, t_ctx where c.counter_key like 'user:' || alice || ':%'),
  array[0::smallint], 'the user''s token counters stay on shard 0');

-- setup: the other three shards, as three other backends settled them (500, 200 and 50 tokens)
insert into ops.token_counters (counter_key, shard, slot_ms, slot_ids, slot_tokens)
select 'org:' || t.org || ':' || w.name, s.shard, w.win * 50,
       array[(extract(epoch from t.t0) * 1000)::bigint / (w.win * 50)], array[s.tokens]
from t_ctx t,
     (values ('minute', 60::bigint), ('day', 86400)) as w (name, win),
     (values (1, 500::bigint), (2, 200), (3, 50)) as x (k, tokens)
     cross join lateral (select ((t.pid + x.k) % 4)::smallint as shard, x.tokens) s;
insert into ops.spend_counters (org_id, month, shard, usd, billed_events)
select t.org, t.month, ((t.pid + x.k) % 4)::smallint, x.usd, 1
from t_ctx t, (values (1, 0.5), (2, 0.25), (3, 0.125)) as x (k, usd);

-- test: every reader sums the shards
select is((select ops.tokens_used('org:' || org || ':minute', 60, t0 + interval '1 second') from t_ctx), 1750::bigint,
  'ops.tokens_used: 1,000 + 500 + 200 + 50 over the four shards');
select is((select ops.tokens_used('org:' || org || ':day', 86400, t0 + interval '1 second') from t_ctx), 1750::bigint,
  'for the day too');
select is((select pg_temp.spend_rows()), 0.0003 + 0.875, 'the spend rows hold $0.0003 + $0.875');
select is((select month_to_date_usd from ops.org_dashboard d, t_ctx where d.org_id = t_ctx.org),
  round(0.8753, 6), 'ops.org_dashboard: one row for the org, with the sum');
select is((select count(*)::int from ops.org_dashboard d, t_ctx where d.org_id = t_ctx.org), 1,
  'not one row per shard');
select is((select (ops.policy_show(org) ->> 'month_to_date_usd')::numeric from t_ctx), round(0.8753, 6),
  'ops.policy_show: the sum');
select ops.budget_set(org, 10, 'alert', 'test') from t_ctx;
select is((select spent_usd from ops.budget_status() s, t_ctx where s.org_id = t_ctx.org), 0.8753,
  'ops.budget_status: the counters'' sum (above the usage log''s $0.0003)');
select ok((select ops.tokens_retry_after('org:' || org || ':minute', 'org', org, alice, 60, 1750, false, t0 + interval '30 seconds')
           between 31 and 33 from t_ctx),
  'ops.tokens_retry_after: room for 1,750 once the slot of t0 (all four shards) leaves the minute, 31-33 s after t0 + 30 s');

-- test: K changed mid-month (4 -> 3 -> 1): nothing lost, nothing doubled
select ops.policy_set(org, null, '{"org_bucket_shards": 3}', 'test') from t_ctx;
create temp table t_k4 as select c.shard, c.usd from ops.spend_counters c, t_ctx where c.org_id = t_ctx.org;
select pg_temp.bill('s2', 2000);
select is((select ops.tokens_used('org:' || org || ':minute', 60, t0 + interval '1 second') from t_ctx), 3750::bigint,
  'K = 3: 1,750 + 2,000 tokens');
select is((select array_agg(c.shard) from ops.spend_counters c cross join t_ctx left join t_k4 k on k.shard = c.shard
           where c.org_id = t_ctx.org and c.usd is distinct from k.usd),
  (select array[(pid % 3)::smallint] from t_ctx), 'the settlement went to shard pid % 3, and only there');
select ops.policy_set(org, null, '{"org_bucket_shards": 1}', 'test') from t_ctx;
select pg_temp.bill('s3', 4000);
select is((select ops.tokens_used('org:' || org || ':minute', 60, t0 + interval '1 second') from t_ctx), 7750::bigint,
  'K = 1: 3,750 + 4,000 tokens, the rows of the old shards still counted');
select is((select pg_temp.spend_rows()), 0.8753 + 0.0006 + 0.0012, 'and the spend: every settlement once');
select is((select billed_events::int from (select sum(c.billed_events) as billed_events from ops.spend_counters c, t_ctx
                                          where c.org_id = t_ctx.org) x), 6, 'three settlements and three rows of other backends');

-- test: a rebuild folds the shards of the month into one row, from the usage log
select ops.rebuild_spend_counters((select t0 from t_ctx));
select is((select count(*)::int from ops.spend_counters c, t_ctx where c.org_id = t_ctx.org), 1, 'one row after a rebuild');
select is((select pg_temp.spend_rows()), 0.0021, 'holding the usage log''s $0.0021 (the other backends'' rows had no usage rows)');

-- test: erasure removes every shard of the member's counters; the org's stay (billing)
insert into ops.token_counters (counter_key, shard, slot_ms, slot_ids, slot_tokens)
select 'user:' || alice || ':minute', s, 3000, array[1::bigint], array[10::bigint] from t_ctx, generate_series(1, 5) s;
select ops.forget_user(alice, 'dpo@example.test') from t_ctx;
select is((select count(*)::int from ops.token_counters c, t_ctx where c.counter_key like 'user:' || alice || ':%'), 0,
  'ops.forget_user deletes the user''s counters on every shard');
select is((select ops.tokens_used('org:' || org || ':minute', 60, t0 + interval '1 second') from t_ctx), 7750::bigint,
  'the org''s counters keep every shard');

-- test: denials
select tests.authenticate_as((select alice from t_ctx));
select throws_ok($$ select count(*) from ops.spend_counters $$, '42501', null, 'a member cannot read the spend counters');
select tests.clear_authentication();

select * from finish();
rollback;
