-- An operator inspecting a sharded org's bucket (ops.bucket_status('org:<id>'),
-- npm run ops -- buckets org:<id>) sees its live rows, and a retired row of
-- an earlier layout shows no room (it admits nothing).
begin;
\ir ../support/pgtap-helpers.psql
select plan(4);

-- setup: one admission on one row, then K = 4, then two more admissions
create temp table t_ctx as select gen_random_uuid() as org;
create temp table t_users as select i, tests.create_user() as id from generate_series(1, 3) i;
select tests.add_member(org, u.id) from t_ctx, t_users u;
select tests.begin_turn(org, u.id, null, now(), 10, 100, 100) from t_ctx, t_users u where u.i = 1;
select ops.policy_set(org, null, '{"org_bucket_shards": 4}', 'test') from t_ctx;
select tests.begin_turn(org, u.id, null, now(), 10, 100, 100) from t_ctx, t_users u where u.i > 1;

-- test: the org bucket and a user bucket
select is((select count(*)::int from ops.bucket_status((select 'org:' || org from t_ctx)) s, t_ctx
           where s.bucket_key like 'org:' || org || '#4.%'), 4,
  'the org''s key lists its four live rows');
select is((select sum(s.used)::int from ops.bucket_status((select 'org:' || org from t_ctx)) s), 3,
  'holding its three admissions');
select is((select s.remaining from ops.bucket_status((select 'org:' || org from t_ctx)) s, t_ctx where s.bucket_key = 'org:' || org), 0,
  'the retired one row shows no room');
select is((select count(*)::int from ops.bucket_status((select 'user:' || id from t_users where i = 1))), 1,
  'a user: key is still its one row');

select * from finish();
rollback;
