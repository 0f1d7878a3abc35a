-- A user may act only for an org it belongs to. Membership is checked
-- first, so a stranger learns nothing about the org (not even its opt-out),
-- and a stranger's refusal costs only its own user: bucket.
begin;
\ir ../support/pgtap-helpers.psql
select plan(8);

-- setup
create temp table t_ctx as
select gen_random_uuid() as org, gen_random_uuid() as other_org, tests.create_user() as member, tests.create_user() as stranger,
       gen_random_uuid() as sid;
select tests.add_member(org, member) from t_ctx;
select public.agent_end_turn(sid, org, member, 'app', 'q', 'a', 3600, 20) from t_ctx;

-- test: member
select is((select tests.begin_turn(org, member, null, now()) ->> 'outcome' from t_ctx), 'ok', 'a member is served');
select is((select tests.begin_turn(org, member, null, now()) -> 'member' from t_ctx), 'true'::jsonb, 'and is told apart as a member');

-- test: stranger
select is((select tests.begin_turn(org, stranger, '10.9.9.9', now()) ->> 'outcome' from t_ctx), 'forbidden', 'a stranger is forbidden');
select is((select tests.begin_turn(org, stranger, '10.9.9.9', now()) -> 'member' from t_ctx), 'false'::jsonb,
  'and its outcome says it is not a member (its usage row names no org)');
select is((select tests.begin_turn(other_org, member, null, now()) ->> 'outcome' from t_ctx), 'forbidden',
  'a member of one org is forbidden in another');
select is((select count(*)::int from ops.rate_limits, t_ctx where bucket_key in ('org:' || other_org, 'ip:10.9.9.9')), 0,
  'forbidden calls charge no org: or ip: bucket');

-- test: membership before the opt-out and the session
select ops.add_opt_out(org, null, null, 'paused', 'test') from t_ctx;
select is((select tests.begin_turn(org, stranger, null, now()) ->> 'outcome' from t_ctx), 'forbidden',
  'a stranger naming an opted-out org is forbidden, not told about the opt-out');
select is((select tests.begin_turn(org, stranger, null, now(), p_session => sid) ->> 'outcome' from t_ctx), 'forbidden',
  'a stranger holding a real session id of the org is forbidden too');

select * from finish();
rollback;
