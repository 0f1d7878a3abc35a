-- Opt-outs are history: a delete (or truncate) is refused for every role but
-- the table owner, service_role included; every insert and update, by the
-- ops functions, the Data API or plain SQL, is recorded with who and when.
begin;
\ir ../support/pgtap-helpers.psql
select plan(11);

-- setup
create temp table t_ctx as select gen_random_uuid() as org, tests.create_user() as alice;
grant select on t_ctx to service_role, authenticated;
create temp table t_opt as select (ops.add_opt_out((select org from t_ctx), (select alice from t_ctx), null, 'asked', 'ops@example.test')).id;
grant select on t_opt to service_role, authenticated;

-- test: service_role cannot delete or truncate
select tests.authenticate_as_service_role();
select throws_ok($$ delete from public.agent_opt_outs where id = (select id from t_opt) $$, '42501', null,
  'service_role cannot delete an opt-out');
select throws_ok($$ truncate public.agent_opt_outs $$, '42501', null, 'nor truncate the registry');
select tests.authenticate_as((select alice from t_ctx));
select throws_ok($$ delete from public.agent_opt_outs $$, '42501', null, 'nor can a member');
select tests.clear_authentication();
-- as if someone granted the delete back: the trigger still refuses
grant delete on public.agent_opt_outs to service_role;
select tests.authenticate_as_service_role();
select throws_ok($$ delete from public.agent_opt_outs where id = (select id from t_opt) $$, '42501', null,
  'the trigger refuses service_role even holding the delete grant (only the owner may delete)');
select tests.clear_authentication();
revoke delete on public.agent_opt_outs from service_role;
select is((select count(*)::int from public.agent_opt_outs where id = (select id from t_opt)), 1, 'the opt-out is still there');

-- test: every change is recorded with who and when
select tests.authenticate_as_service_role();
update public.agent_opt_outs set reason = 'asked twice' where id = (select id from t_opt);
select tests.clear_authentication();
select ops.expire_opt_out((select id from t_opt), 'support@example.test');
insert into public.agent_opt_outs (org_id, reason) select org, 'from Studio' from t_ctx;

select is((select actor || ' ' || db_role from ops.opt_out_audit where opt_out_id = (select id from t_opt) and action = 'insert'),
  'ops@example.test ' || current_user, 'the insert by ops.add_opt_out names its created_by');
select is((select db_role || ' ' || (new_value ->> 'reason') from ops.opt_out_audit
           where opt_out_id = (select id from t_opt) and action = 'update' order by id limit 1),
  'service_role asked twice', 'an update through the Data API names service_role');
select is((select actor || ' ' || (old_value ->> 'expires_at' is null) || ' ' || (new_value ->> 'expires_at' is not null)
           from ops.opt_out_audit where opt_out_id = (select id from t_opt) and action = 'update' order by id desc limit 1),
  'support@example.test true true', 'expiring names who expired it, with the row before and after');
select is((select actor from ops.opt_out_audit a join public.agent_opt_outs o on o.id = a.opt_out_id where o.reason = 'from Studio'),
  current_user::text, 'plain SQL is recorded with the database role');

-- test: nobody writes the audit themselves
select tests.authenticate_as_service_role();
select throws_ok($$ insert into ops.opt_out_audit (opt_out_id, action, actor, db_role) values (gen_random_uuid(), 'insert', 'x', 'x') $$,
  '42501', null, 'service_role cannot forge an audit row');
select throws_ok($$ delete from ops.opt_out_audit $$, '42501', null, 'nor delete one');
select tests.clear_authentication();

select * from finish();
rollback;
