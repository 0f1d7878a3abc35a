-- Changing an org's K (org_bucket_shards) moves the admissions still in the
-- window into the new rows (ops.reshard_org_bucket, run by the policy
-- trigger): the org never admits more than its limit across the change, no
-- row of the new layout holds more than its share, and the old rows go.
begin;
\ir ../support/pgtap-helpers.psql
select plan(17);

-- setup: an org of 20 members, limit 10 a minute (the turns' own limit), one row
create temp table t_ctx as select gen_random_uuid() as org, gen_random_uuid() as other;
create temp table t_users as select i, tests.create_user() as id from generate_series(1, 20) i;
select tests.add_member(org, u.id), tests.add_member(other, u.id) from t_ctx, t_users u;
create temp table t_calls (phase text, outcome text);
insert into t_calls
select 'one row', tests.begin_turn(org, u.id, null, now() + make_interval(secs => u.i / 100.0), 10, 100, 100) ->> 'outcome'
from t_ctx, t_users u where u.i <= 6;

-- test: one row to four shards keeps the six admissions
select ops.policy_set(org, null, '{"org_bucket_shards": 4}', 'test') from t_ctx;
select is((select count(*)::int from ops.rate_limits, t_ctx where bucket_key = 'org:' || org and retired and slot_total = 0), 1,
  'the one row is retired, empty');
select is((select array_agg(bucket_key order by bucket_key) from ops.rate_limits, t_ctx where bucket_key like 'org:' || org || '#%' and not retired),
  (select array_agg('org:' || org || '#4.' || s order by 'org:' || org || '#4.' || s) from t_ctx, generate_series(0, 3) s),
  'the bucket is four rows, named with their K');
select is((select sum(slot_total)::int from ops.rate_limits, t_ctx where bucket_key like 'org:' || org || '#%' and not retired), 6,
  'holding the six admissions');
select is((select sum(c)::int from ops.rate_limits, t_ctx, unnest(slot_counts) c where bucket_key like 'org:' || org || '#%' and not retired), 6,
  'in their slots');
select ok((select bool_and(slot_total <= max_requests) from ops.rate_limits, t_ctx where bucket_key like 'org:' || org || '#%' and not retired),
  'none past its share of the limit (3, 3, 2, 2)');

-- test: the org then admits exactly what was left of its limit
insert into t_calls
select 'four shards', tests.begin_turn(org, u.id, null, now() + interval '1 second' + make_interval(secs => u.i / 100.0), 10, 100, 100) ->> 'outcome'
from t_ctx, t_users u where u.i between 7 and 16;
select is((select count(*)::int from t_calls where phase = 'four shards' and outcome = 'ok'), 4,
  'four more admitted after the change (10 - 6), not a fresh limit');

-- test: back to one row, the ten stay counted
select ops.policy_set(org, null, '{"org_bucket_shards": 1}', 'test') from t_ctx;
select is((select array_agg(bucket_key) from ops.rate_limits, t_ctx where bucket_key like 'org:' || org || '%' and not retired),
  (select array['org:' || org] from t_ctx), 'one row again');
select is((select ops.consume_rate_limits(array['org:' || org], array[10], array[60], now(), 4) ->> 'allowed' from t_ctx),
  'false', 'a turn that read the old K (4) finds its rows retired and is refused');
select is((select slot_total from ops.rate_limits, t_ctx where bucket_key = 'org:' || org), 10, 'with all ten admissions');
select is((select tests.begin_turn(org, u.id, null, now() + interval '2 seconds', 10, 100, 100) ->> 'outcome' from t_ctx, t_users u where u.i = 17),
  'rate_limit', 'and the org is still full');

-- test: more shards than admissions left, and a limit that went down: counts overflow onto the last row
select ops.reshard_org_bucket(org, 3, 1, 4) from t_ctx;
select is((select array_agg(slot_total order by bucket_key) from ops.rate_limits, t_ctx where bucket_key like 'org:' || org || '#%' and not retired),
  array[2, 1, 7], 'a limit of 4 in 3 rows: 2 and 1 filled, the rest on the last row, nothing dropped');
select ops.policy_set(org, null, '{"org_bucket_shards": 3}', 'test') from t_ctx;
select is((select sum(slot_total)::int from ops.rate_limits, t_ctx where bucket_key like 'org:' || org || '#%' and not retired),
  10, 'the policy then set to that K keeps all ten');

-- test: a global K applies to orgs without their own, and only then
select tests.begin_turn(other, u.id, null, now(), 10, 100, 100) from t_ctx, t_users u where u.i <= 2;
select ops.policy_set(null, null, '{"org_bucket_shards": 2}', 'test');
select is((select count(*)::int from ops.rate_limits, t_ctx where bucket_key like 'org:' || other || '#%' and not retired), 2,
  'the global K lays out an org without its own in two rows');
select is((select sum(slot_total)::int from ops.rate_limits, t_ctx where bucket_key like 'org:' || other || '#%' and not retired), 2,
  'keeping its two admissions');
select is((select count(*)::int from ops.rate_limits, t_ctx where bucket_key like 'org:' || org || '#%' and not retired), 3,
  'an org with its own K keeps its layout');

-- test: clearing the tenant row falls back to the global K
select ops.policy_clear(org, null, 'test') from t_ctx;
select is((select count(*)::int from ops.rate_limits, t_ctx where bucket_key like 'org:' || org || '#%' and not retired), 2,
  'the tenant row cleared: the global K (2)');
select is((select sum(slot_total)::int from ops.rate_limits, t_ctx where bucket_key like 'org:' || org || '#%' and not retired), 10,
  'still holding all ten');

select * from finish();
rollback;
