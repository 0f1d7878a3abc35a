-- Report buckets sit on clock boundaries: a bucket starts at the same instant
-- whenever the report is asked for; a null bucket is one row for the period.
begin;
\ir ../support/pgtap-helpers.psql
select plan(10);

-- setup: one request every 7 minutes for 3 hours of a quiet day, and one
-- every 10 minutes over the last 25 hours
create temp table t_ctx as select gen_random_uuid() as org, timestamptz '2031-02-03 10:00:00+00' as t0;
grant select on t_ctx to service_role;
insert into public.agent_usage_events (org_id, success, latency_ms, created_at)
select org, true, 10, t0 + make_interval(mins => 7 * i) from t_ctx, generate_series(0, 25) i;
insert into public.agent_usage_events (org_id, success, latency_ms, created_at)
select org, true, 10, now() - make_interval(mins => 10 * i) from t_ctx, generate_series(0, 150) i;

-- test: service role
select tests.authenticate_as_service_role();
select results_eq(
  $$select bucket_start, requests from ops.usage_report(
      (select t0 from t_ctx) + interval '2 seconds', (select t0 from t_ctx) + interval '3 hours',
      '15 minutes', (select org from t_ctx)) order by bucket_start$$,
  $$select bucket_start, requests from ops.usage_report(
      (select t0 from t_ctx) + interval '9 seconds', (select t0 from t_ctx) + interval '3 hours 7 seconds',
      '15 minutes', (select org from t_ctx)) order by bucket_start$$,
  'two reports asked 7 seconds apart have the same buckets');
select is(
  (select count(*)::int from ops.usage_report((select t0 from t_ctx) + interval '2 seconds',
     (select t0 from t_ctx) + interval '3 hours', '15 minutes', (select org from t_ctx))
   where extract(epoch from bucket_start)::bigint % 900 <> 0),
  0, 'every 15-minute bucket starts on a quarter hour');
select is(
  (select min(bucket_start) from ops.usage_report((select t0 from t_ctx) + interval '20 minutes',
     (select t0 from t_ctx) + interval '3 hours', '1 hour', (select org from t_ctx))),
  (select t0 from t_ctx), 'an hour bucket starts on the hour, not at the start of the period');
select is(
  (select bucket_start from ops.usage_report((select t0 from t_ctx), (select t0 from t_ctx) + interval '3 hours',
     '1 day', (select org from t_ctx))),
  timestamptz '2031-02-03 00:00:00+00', 'a day bucket starts at midnight UTC');
select is(
  (select requests from ops.usage_report((select t0 from t_ctx) + interval '20 minutes',
     (select t0 from t_ctx) + interval '3 hours', '1 hour', (select org from t_ctx))
   order by bucket_start limit 1),
  6::bigint, 'the first bucket counts only the rows inside the period (6 of the hour''s 9)');
select results_eq(
  $$select bucket_start, requests from ops.usage_report((select t0 from t_ctx) + interval '3 seconds',
      (select t0 from t_ctx) + interval '3 hours', null, (select org from t_ctx))$$,
  $$select (select t0 from t_ctx) + interval '3 seconds', 25::bigint$$,
  'a null bucket is one row for the whole period, starting at its start');

select is(
  (select count(*)::int from ops.health_15m where extract(epoch from bucket_start)::bigint % 900 <> 0),
  0, 'health_15m buckets start on quarter hours');
select is(
  (select min(bucket_start) from ops.health_15m),
  date_bin('15 minutes', now(), timestamptz '2000-01-01 00:00:00+00') - interval '24 hours',
  'and span the 24 hours before the current quarter hour, whole');
select tests.clear_authentication();

-- test: anon and authenticated read no report
select tests.authenticate_as_anon();
select throws_ok($$select * from ops.health_15m$$, '42501', null, 'anon cannot read health_15m');
select tests.clear_authentication();
select tests.authenticate_as(tests.create_user());
select throws_ok($$select * from ops.usage_report(now() - interval '1 day', now())$$, '42501', null,
  'authenticated cannot run usage_report');
select tests.clear_authentication();

select * from finish();
rollback;
