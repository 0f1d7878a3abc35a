-- Retention of alert notifications: ops.purge_expired deletes outbox rows that
-- are settled (delivered, or failed) more than 30 days ago, in bounded
-- batches; a pending row is never deleted, however old, and recent settled
-- rows stay for the operator's `ops alerts`.
begin;
\ir ../support/pgtap-helpers.psql
select plan(5);

-- setup
create temp table t_ctx as select timestamptz '2026-06-01 00:00:00+00' as now;
grant select on t_ctx to service_role;
insert into ops.alert_outbox (state, destination, dedup_key, payload, status, next_attempt_at, created_at)
select 'raised', 'slack', 'retention/' || r.name, '{}'::jsonb, r.status, t.now, t.now - r.age
from t_ctx t, (values ('old-delivered', 'delivered', interval '31 days'),
                      ('old-failed', 'failed', interval '40 days'),
                      ('old-pending', 'pending', interval '90 days'),
                      ('recent-delivered', 'delivered', interval '2 days')) r (name, status, age);

-- test: one purge at the clock, as service_role, one row per batch
select tests.authenticate_as_service_role();
create temp table t_purge as select ops.purge_expired((select now from t_ctx), null, 1) as result;
select is((select (result ->> 'alert_notifications_deleted')::integer from t_purge), 1,
  'a batch of one deletes one settled notification');
select is((select (result ->> 'more')::boolean from t_purge), true, 'and says there is more');
select ops.purge_expired((select now from t_ctx), null, 1);
select ops.purge_expired((select now from t_ctx), null, 1);
select tests.clear_authentication();

select set_eq(
  $$select dedup_key from ops.alert_outbox where dedup_key like 'retention/%'$$,
  array['retention/old-pending', 'retention/recent-delivered'],
  'settled rows past 30 days are gone; the pending and the recent one stay');
select is((select status from ops.alert_outbox where dedup_key = 'retention/old-pending'), 'pending',
  'a pending notification is never purged');
select ok(
  (select obj_description('ops.purge_expired(timestamptz, interval, integer)'::regprocedure)) like '%alert notifications%',
  'the comment operators read names the outbox retention');

select * from finish();
rollback;
