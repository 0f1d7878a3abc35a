-- A user may act only for an org it belongs to; a stranger consumes nothing.
begin;
\ir ../support/pgtap-helpers.psql
select plan(4);

-- setup
create temp table t_ctx as
select gen_random_uuid() as org, gen_random_uuid() as other_org, tests.create_user() as member, tests.create_user() as stranger;
select tests.add_member(org, member) from t_ctx;

-- test: member
select is((select tests.begin_turn(org, member, null, now()) ->> 'outcome' from t_ctx), 'ok', 'a member is served');
-- test: stranger
select is((select tests.begin_turn(org, stranger, null, now()) ->> 'outcome' from t_ctx), 'forbidden', 'a stranger is forbidden');
select is((select tests.begin_turn(other_org, member, null, now()) ->> 'outcome' from t_ctx), 'forbidden',
  'a member of one org is forbidden in another');
select is((select count(*)::int from ops.rate_limits, t_ctx where bucket_key in ('user:' || stranger, 'org:' || other_org)), 0,
  'forbidden calls create no bucket');

select * from finish();
rollback;
