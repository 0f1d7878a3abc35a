-- The sliding window: N admissions per W seconds, refused after, room again
-- as the clock moves; never more than N in any W seconds.
begin;
\ir ../support/pgtap-helpers.psql
select plan(14);

-- setup
create temp table t_ctx as select gen_random_uuid() as org, tests.create_user() as usr;
select tests.add_member(org, usr) from t_ctx;
create temp table t_results (i int, now_at timestamptz, allowed boolean, retry int);
grant select on t_ctx to service_role;
grant insert, select on t_results to service_role;

-- test: service role, limit 3 per 60 s on the user bucket
select tests.authenticate_as_service_role();
insert into t_results
select g, '2026-01-01 12:00:00+00'::timestamptz + (g * interval '1 second'),
       (r -> 'rate_limit' ->> 'allowed')::boolean, (r -> 'rate_limit' ->> 'retry_after_seconds')::int
from t_ctx, generate_series(1, 5) g,
     lateral tests.begin_turn(org, usr, null, '2026-01-01 12:00:00+00'::timestamptz + (g * interval '1 second'), p_user_limit => 3) r;
select tests.clear_authentication();

select is((select count(*)::int from t_results where allowed), 3, 'three of five admitted with a limit of 3');
select results_eq('select allowed from t_results order by i', array[true, true, true, false, false], 'the first three are admitted, then refused');
select ok((select bool_and(retry between 1 and 61) from t_results where not allowed), 'a refusal says when to retry, within one window and one slot (60.6 s)');

select is(
  (select (tests.begin_turn(org, usr, null, '2026-01-01 12:00:30+00', p_user_limit => 3) -> 'rate_limit' ->> 'scope') from t_ctx),
  'user', 'the refusal names the user scope');

-- Slots of 0.6 s (W/100): the admissions of 12:00:01, :02 and :03 sit in the
-- slots ending at 12:00:01.2, :02.4 and :03.6, and count until those ends
-- are a window old.
select is(
  (select (tests.begin_turn(org, usr, null, '2026-01-01 12:01:01.1+00', p_user_limit => 3) -> 'rate_limit' ->> 'allowed')::boolean from t_ctx),
  false, 'still refused while the earliest slot overlaps the window');
select is(
  (select (tests.begin_turn(org, usr, null, '2026-01-01 12:01:01.2+00', p_user_limit => 3) -> 'rate_limit' ->> 'allowed')::boolean from t_ctx),
  true, 'admitted once the first slot has left the window (at most one slot, 0.6 s, after an exact log)');
select is(
  (select (tests.begin_turn(org, usr, null, '2026-01-01 12:01:02.4+00', p_user_limit => 3) -> 'rate_limit' ->> 'allowed')::boolean from t_ctx),
  true, 'and again once the second has');
select is(
  (select (tests.begin_turn(org, usr, null, '2026-01-01 12:01:03.5+00', p_user_limit => 3) -> 'rate_limit' ->> 'allowed')::boolean from t_ctx),
  false, 'and then the bucket is full again');

select is(
  (select r.slot_total from ops.rate_limits r, t_ctx where r.bucket_key = 'user:' || t_ctx.usr),
  3, 'the row holds three admissions at the last decision');

-- a long way later the window is empty again
select is(
  (select (tests.begin_turn(org, usr, null, '2026-01-01 13:00:00+00', p_user_limit => 3) -> 'rate_limit' ->> 'remaining')::int from t_ctx),
  2, 'an hour later the bucket starts fresh (3 - 1 remaining)');

-- guarantee: a burst spread over time never exceeds N in any 60-second interval
create temp table t_burst as
select g, '2026-01-02 00:00:00+00'::timestamptz + (g * interval '700 milliseconds') as at,
       (tests.begin_turn(org, usr, null, '2026-01-02 00:00:00+00'::timestamptz + (g * interval '700 milliseconds'),
                         p_user_limit => 10) -> 'rate_limit' ->> 'allowed')::boolean as allowed
from t_ctx, generate_series(1, 600) g;
select is(
  (select max(c)::int from (
     select (select count(*) from t_burst b where b.allowed and b.at >= a.at and b.at < a.at + interval '60 seconds') as c
     from t_burst a) x),
  10, 'over 7 minutes of one request every 0.7 s, no 60-second interval holds more than 10 admissions');
select cmp_ok(
  (select count(*)::int from t_burst where allowed), '>=', 60,
  'and the limiter does not starve: at least 10 per ~63 s were admitted');

-- test: a turn whose clock is older than the bucket's newest admission (it
-- waited for the lock) counts in that newest slot, so the slots stay ascending
-- and nothing still in the window is ever dropped
select ops.consume_rate_limits(array['user:late-clock'], array[10], array[60], '2026-03-01 10:00:30+00');
select ops.consume_rate_limits(array['user:late-clock'], array[10], array[60], '2026-03-01 10:00:10+00');
select is((select slot_ids from ops.rate_limits where bucket_key = 'user:late-clock'),
  array[(extract(epoch from timestamptz '2026-03-01 10:00:30+00') * 1000)::bigint / 600],
  'the late turn is counted in the newest slot');
select is((select slot_counts from ops.rate_limits where bucket_key = 'user:late-clock'), array[2],
  'with the turn before it');

select * from finish();
rollback;
