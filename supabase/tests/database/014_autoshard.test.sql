-- Hot tenants sharded automatically (ops.autoshard_org_buckets, every minute
-- on pg_cron): an org admitting at least the threshold rate gets K rows by
-- its rate, audited; a quiet org is left alone; an operator's K is never
-- touched; an org the job sharded goes back down when it cools.
begin;
\ir ../support/pgtap-helpers.psql
select plan(11);

-- setup: a hot org (300 admissions in its 60 s window: 5 a second) and a quiet one (20)
create temp table t_ctx as select gen_random_uuid() as hot, gen_random_uuid() as quiet, gen_random_uuid() as pinned;
create temp table t_users as select i, tests.create_user() as id from generate_series(1, 300) i;
select tests.add_member(hot, u.id), tests.add_member(quiet, u.id), tests.add_member(pinned, u.id) from t_ctx, t_users u;
select count(*) from t_ctx, t_users u, tests.begin_turn(hot, u.id, null, now() - interval '10 seconds' + make_interval(secs => u.i / 100.0), 1000, 100, 100) r;
select count(*) from t_ctx, t_users u, tests.begin_turn(quiet, u.id, null, now() - interval '10 seconds', 1000, 100, 100) r where u.i <= 20;
select count(*) from t_ctx, t_users u, tests.begin_turn(pinned, u.id, null, now() - interval '10 seconds', 1000, 100, 100) r;
select ops.policy_set(pinned, null, '{"org_bucket_shards": 2}', 'ops@example.test') from t_ctx;

-- test: threshold 2 turns/s, one row per 1 turn/s
create temp table t_run as select * from ops.autoshard_org_buckets(2, 1);
select is((select shards_after from t_run, t_ctx where org_id = hot), 8,
  'the hot org (5 turns/s, 1 per row) gets 8 rows: the next power of two');
select is((select org_bucket_shards from ops.agent_policies, t_ctx where org_id = hot), 8, 'set as its policy');
select is((select sum(slot_total)::int from ops.rate_limits, t_ctx where bucket_key like 'org:' || hot || '#8.%' and not retired), 300,
  'holding its 300 admissions in the window');
select ok((select count(*) = 1 from ops.policy_audit a, t_ctx where a.org_id = hot and a.actor = 'ops.autoshard_org_buckets'),
  'audited as the job''s change');
select is((select count(*)::int from t_run, t_ctx where org_id in (quiet, pinned)), 0,
  'the quiet org (under the threshold) and the org an operator pinned to 2 rows are left alone');

-- test: a second run changes nothing
select is((select count(*)::int from ops.autoshard_org_buckets(2, 1)), 0, 'a second run at the same rate changes nothing');

-- test: an operator's change takes the org over
select ops.policy_set(hot, null, '{"org_bucket_shards": 4}', 'ops@example.test') from t_ctx;
select is((select count(*)::int from ops.autoshard_org_buckets(100, 1, now() + interval '2 minutes'), t_ctx where org_id = hot), 0,
  'an org whose K an operator changed is not brought back down');

-- test: the job's org cools and comes back down to one row
select is((select shards_after from ops.autoshard_org_buckets(0.3, 0.05), t_ctx where org_id = quiet), 8,
  'the quiet org (1 turn every 3 s) at a lower threshold: 8 rows');
select is((select shards_after from ops.autoshard_org_buckets(0.3, 0.05, now() + interval '2 minutes'), t_ctx where org_id = quiet), 1,
  'two minutes later, nothing in its window: back to one row');
select is((select array_agg(bucket_key) from ops.rate_limits, t_ctx where bucket_key like 'org:' || quiet || '%' and not retired),
  (select array['org:' || quiet] from t_ctx), 'its bucket is one row again');

-- test: bad thresholds
select throws_ok($$ select * from ops.autoshard_org_buckets(0, 1) $$, '22023', null, 'a threshold must be positive');

select * from finish();
rollback;
