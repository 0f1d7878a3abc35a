-- Finding (attack): service_role (the Data API's secret key) could UPDATE
-- any column of an opt-out: move it to another member or org (user_id,
-- org_id), widen or narrow it (channel), or change its id, so the member's
-- history (ops.opt_out_audit joined on the current id and user, as
-- ops.export_user and the runbook read it) no longer shows what they asked.
-- An opt-out is expired, and its reason noted; whose and what it is stays.
begin;
\ir ../support/pgtap-helpers.psql
select plan(7);

-- setup
create temp table t_ctx as select gen_random_uuid() as org, tests.create_user() as alice, tests.create_user() as bob;
grant select on t_ctx to service_role;
create temp table t_opt as select (ops.add_opt_out((select org from t_ctx), (select alice from t_ctx), 'sms', 'asked', 'dpo@example.test')).id;
grant select on t_opt to service_role;

-- test: service_role may not rewrite whose or what an opt-out is
select tests.authenticate_as_service_role();
select throws_ok($$ update public.agent_opt_outs set user_id = (select bob from t_ctx) where id = (select id from t_opt) $$,
  '42501', null, 'service_role cannot move an opt-out to another member');
select throws_ok($$ update public.agent_opt_outs set org_id = gen_random_uuid() where id = (select id from t_opt) $$,
  '42501', null, 'nor to another org');
select throws_ok($$ update public.agent_opt_outs set channel = 'whatsapp' where id = (select id from t_opt) $$,
  '42501', null, 'nor change its channel');
select throws_ok($$ update public.agent_opt_outs set id = gen_random_uuid() where id = (select id from t_opt) $$,
  '42501', null, 'nor its id (which its history is keyed by)');
select throws_ok($$ update public.agent_opt_outs set created_at = now() - interval '1 year', created_by = 'x' where id = (select id from t_opt) $$,
  '42501', null, 'nor when and by whom it was made');

-- test: expiring it (and noting a reason) still works
select is((select (ops.expire_opt_out((select id from t_opt), 'dpo@example.test')).expired_by), 'dpo@example.test',
  'ops.expire_opt_out still expires it as service_role');
select lives_ok($$ update public.agent_opt_outs set reason = 'asked twice' where id = (select id from t_opt) $$,
  'and the reason may still be noted');
select tests.clear_authentication();

select * from finish();
rollback;
