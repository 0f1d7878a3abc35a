-- Per-scope limits decided together: a refused request consumes no bucket;
-- the ip: bucket is skipped when the IP is unknown.
begin;
\ir ../support/pgtap-helpers.psql
select plan(9);

-- setup
create temp table t_ctx as
select gen_random_uuid() as org, tests.create_user() as alice, tests.create_user() as bob;
select tests.add_member(org, alice), tests.add_member(org, bob) from t_ctx;

-- test: org limit 3, user limit 2, ip limit 10
select tests.begin_turn(org, alice, '198.51.100.7', '2026-03-01 10:00:00+00', 3, 2, 10) from t_ctx;
select tests.begin_turn(org, alice, '198.51.100.7', '2026-03-01 10:00:01+00', 3, 2, 10) from t_ctx;
create temp table t_refused as
select tests.begin_turn(org, alice, '198.51.100.7', '2026-03-01 10:00:02+00', 3, 2, 10) as r from t_ctx;

select is((select r ->> 'outcome' from t_refused), 'rate_limit', 'the third call of alice is refused');
select is((select r -> 'rate_limit' ->> 'scope' from t_refused), 'user', 'by her user bucket');
select is((select slot_total from ops.rate_limits, t_ctx where bucket_key = 'org:' || org), 2,
  'the org bucket was not charged for the refused call');
select is((select slot_total from ops.rate_limits where bucket_key = 'ip:198.51.100.7'), 2,
  'nor the ip bucket');

-- bob takes the last org slot, then the org refuses everyone
select is((select tests.begin_turn(org, bob, null, '2026-03-01 10:00:03+00', 3, 2, 10) ->> 'outcome' from t_ctx), 'ok',
  'bob gets the third org slot');
create temp table t_org_refused as
select tests.begin_turn(org, bob, null, '2026-03-01 10:00:04+00', 3, 2, 10) as r from t_ctx;
select is((select r -> 'rate_limit' ->> 'scope' from t_org_refused), 'org', 'then the org bucket refuses');
select is((select slot_total from ops.rate_limits, t_ctx where bucket_key = 'user:' || bob), 1,
  'and bob''s user bucket is not charged either: a refusal writes no bucket');
select is((select count(*)::int from ops.rate_limits
           where bucket_key like 'ip:%' and bucket_key <> 'ip:198.51.100.7' and updated_at >= '2026-03-01 10:00:00+00'
             and updated_at < '2026-03-01 10:01:00+00'), 0,
  'no ip bucket exists for calls without an IP');
select throws_ok(
  $$select ops.consume_rate_limits(array['user:x'], array[0], array[60])$$,
  '22023', null, 'a limit below 1 is rejected');

select * from finish();
rollback;
