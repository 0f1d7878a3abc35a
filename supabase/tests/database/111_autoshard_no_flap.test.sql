-- ops.autoshard_org_buckets does not flap: an org the job sharded whose rate
-- dips just under the threshold keeps the rows its rate needs (it went up at
-- the threshold, it comes down only when a quarter of its rows would do, to
-- the rows its rate needs), and an org the job left at 2 rows comes back to
-- one once one row carries its rate.
begin;
\ir ../support/pgtap-helpers.psql
select plan(5);

-- setup: an org admitting 300 turns in its 60 s window (5 a second)
create temp table t_ctx as select gen_random_uuid() as hot;
create temp table t_users as select i, tests.create_user() as id from generate_series(1, 300) i;
select tests.add_member(hot, u.id) from t_ctx, t_users u;
select count(*) from t_ctx, t_users u, tests.begin_turn(hot, u.id, null, now() - interval '10 seconds' + make_interval(secs => u.i / 100.0), 1000, 100, 100) r;

-- test: up at the threshold (2 turns/s, 1 per row): 8 rows
select is((select shards_after from ops.autoshard_org_buckets(2, 1), t_ctx where org_id = hot), 8,
  'the org (5 turns/s) gets 8 rows');

-- test: the threshold now just above its rate: its 5 turns/s still need 8 rows of 1
select is((select count(*)::int from ops.autoshard_org_buckets(5.5, 1), t_ctx where org_id = hot), 0,
  'just under the threshold, an org whose rate still needs its rows keeps them');
select is((select shards_after from ops.autoshard_org_buckets(2, 1), t_ctx where org_id = hot), null,
  'so the next run at the old threshold has nothing to raise (no flap)');

-- test: cooler (4 turns/s a row): down to the 2 rows its rate needs, not to 1
select is((select shards_after from ops.autoshard_org_buckets(5.5, 4), t_ctx where org_id = hot), 2,
  'a quarter of its rows would do: down to the 2 its rate needs');

-- test: under the threshold and within one row (8 turns/s a row): back to one row
select is((select shards_after from ops.autoshard_org_buckets(5.5, 8), t_ctx where org_id = hot), 1,
  'one row carries it: back to one row, also from 2');

select * from finish();
rollback;
