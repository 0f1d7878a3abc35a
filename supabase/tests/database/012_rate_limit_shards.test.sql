-- A hot tenant's org: bucket split into shards (org_bucket_shards): the
-- shards' limits add up to the org limit, so the org never admits more than
-- its limit; a full shard sends the turn to the next one, so the org refuses
-- only when every shard is full; the decision stays all-or-nothing.
begin;
\ir ../support/pgtap-helpers.psql
select plan(13);

-- setup: an org of 20 members, its org: bucket in 4 shards, limit 10 a minute
create temp table t_ctx as select gen_random_uuid() as org, gen_random_uuid() as small;
create temp table t_users as select i, tests.create_user() as id from generate_series(1, 20) i;
select tests.add_member(org, u.id), tests.add_member(small, u.id) from t_ctx, t_users u;
select ops.policy_set(org, null, '{"org_bucket_shards": 4, "org_max_requests": 10}', 'test') from t_ctx;
select ops.policy_set(small, null, '{"org_bucket_shards": 4, "org_max_requests": 2}', 'test') from t_ctx;

-- test: 15 turns of 15 members in one second: exactly the org limit is admitted
create temp table t_calls as
select u.i, tests.begin_turn(org, u.id, null, '2026-03-01 10:00:00+00'::timestamptz + make_interval(secs => u.i / 100.0), 1000, 100, 100) as r
from t_ctx, t_users u where u.i <= 15 order by u.i;
select is((select count(*)::int from t_calls where r ->> 'outcome' = 'ok'), 10, 'ten of fifteen turns are admitted: the org limit');
select is((select count(*)::int from t_calls where r ->> 'outcome' = 'rate_limit' and r -> 'rate_limit' ->> 'scope' = 'org'), 5,
  'the other five are refused by the org bucket');
select is((select count(*)::int from ops.rate_limits, t_ctx where bucket_key like 'org:' || org || '#%'), 4, 'the bucket is four rows');
select is((select array_agg(slot_total order by bucket_key) from ops.rate_limits, t_ctx where bucket_key like 'org:' || org || '#%'),
  array[3, 3, 2, 2], 'every shard full at its share of the limit (3 + 3 + 2 + 2 = 10)');
select ok((select bool_and(max_requests = slot_total) from ops.rate_limits, t_ctx where bucket_key like 'org:' || org || '#%'),
  'no shard admitted past its own limit');
select is((select r -> 'rate_limit' ->> 'key' from t_calls, t_ctx where i = 15), 'org:' || (select org from t_ctx),
  'a refusal names the org bucket, not a shard');
select ok((select bool_and(r -> 'rate_limit' ->> 'key' = 'org:' || org and (r -> 'rate_limit' ->> 'limit')::int = 10
                           and (r -> 'rate_limit' ->> 'remaining')::int between 0 and 9)
           from t_calls, t_ctx where r ->> 'outcome' = 'ok' and r -> 'rate_limit' ->> 'scope' = 'org'),
  'an admission the org bucket answers for names the org and its whole limit, with no more remaining than the org has');
select ok((select (r -> 'rate_limit' ->> 'retry_after_seconds')::int between 1 and 63 from t_calls where i = 15),
  'with the time the first shard frees (at most the window and one slot)');
select is((select count(*)::int from ops.rate_limits r, t_users u where r.bucket_key = 'user:' || u.id and u.i <= 15 and r.slot_total > 0), 10,
  'refused turns charged no user bucket (all-or-nothing)');

-- test: a minute later every shard has room again
select is((select tests.begin_turn(org, u.id, null, '2026-03-01 10:01:05+00', 1000, 100, 100) ->> 'outcome' from t_ctx, t_users u where u.i = 16),
  'ok', 'the window slides for every shard');

-- test: more shards than the limit: one slot per shard, never more than the limit
select is((select count(*)::int from t_ctx, t_users u
           where u.i <= 5 and tests.begin_turn(small, u.id, null, '2026-03-01 10:00:00+00', 1000, 100, 100) ->> 'outcome' = 'ok'),
  2, 'an org limit of 2 with 4 shards admits 2');

-- test: the operator clears the whole bucket
select is((select ops.clear_rate_limit('org:' || org) from t_ctx), 4, 'clearing the org bucket clears its shards');

-- test: callers without the service role
select tests.authenticate_as_anon();
select throws_ok($$ select ops.consume_rate_limits(array['org:x'], array[1], array[60], now(), 2) $$, '42501', null,
  'anon cannot decide buckets');
select tests.clear_authentication();

select * from finish();
rollback;
