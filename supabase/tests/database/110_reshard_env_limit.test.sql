-- Changing K of an org whose limit comes from the environment (no
-- org_max_requests in any policy, so the trigger passes no limit to
-- ops.reshard_org_bucket): the admissions in the window are spread so that
-- no new row holds more than its share of any limit they could have been
-- admitted under, and the org admits nothing past its limit after the
-- change.
begin;
\ir ../support/pgtap-helpers.psql
select plan(5);

-- setup: an org of 20 members at 4 rows, limit 10 a minute from the environment, full
create temp table t_ctx as select gen_random_uuid() as org;
create temp table t_users as select i, tests.create_user() as id from generate_series(1, 20) i;
select tests.add_member(org, u.id) from t_ctx, t_users u;
select ops.policy_set(org, null, '{"org_bucket_shards": 4}', 'test') from t_ctx;
create temp table t_calls (phase text, outcome text);
insert into t_calls
select 'four rows', tests.begin_turn(org, u.id, null, now() + make_interval(secs => u.i / 100.0), 10, 100, 100) ->> 'outcome'
from t_ctx, t_users u where u.i <= 12;
select is((select count(*)::int from t_calls where phase = 'four rows' and outcome = 'ok'), 10,
  'four rows admit the limit (10) and no more');

-- test: four rows to two: the ten stay counted, each row at most its share (5, 5)
select ops.policy_set(org, null, '{"org_bucket_shards": 2}', 'test') from t_ctx;
select is((select sum(slot_total)::int from ops.rate_limits, t_ctx where bucket_key like 'org:' || org || '#2.%' and not retired), 10,
  'the two rows hold the ten admissions');
select is((select array_agg(slot_total order by bucket_key) from ops.rate_limits, t_ctx where bucket_key like 'org:' || org || '#2.%'),
  array[5, 5], 'spread 5 and 5, not filled up to a guessed limit');
insert into t_calls
select 'two rows', tests.begin_turn(org, u.id, null, now() + interval '1 second' + make_interval(secs => u.i / 100.0), 10, 100, 100) ->> 'outcome'
from t_ctx, t_users u where u.i between 13 and 20;
select is((select count(*)::int from t_calls where phase = 'two rows' and outcome = 'ok'), 0,
  'the org, still full, admits nothing after the change');

-- test: and to eight rows (more rows than admissions left in some)
select ops.policy_set(org, null, '{"org_bucket_shards": 8}', 'test') from t_ctx;
insert into t_calls
select 'eight rows', tests.begin_turn(org, u.id, null, now() + interval '2 seconds' + make_interval(secs => u.i / 100.0), 10, 100, 100) ->> 'outcome'
from t_ctx, t_users u where u.i between 1 and 20;
select is((select count(*)::int from t_calls where phase = 'eight rows' and outcome = 'ok'), 0,
  'eight rows: still nothing past the limit');

select * from finish();
rollback;
