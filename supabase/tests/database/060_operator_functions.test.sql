-- Operator functions: clear a bucket, expire an opt-out, show a session, purge.
begin;
\ir ../support/pgtap-helpers.psql
select plan(13);

-- setup
create temp table t_ctx as select gen_random_uuid() as org, tests.create_user() as alice, gen_random_uuid() as s1, gen_random_uuid() as s2;
grant select on t_ctx to service_role;
select tests.add_member(org, alice) from t_ctx;
select tests.begin_turn(org, alice, '10.0.0.1', '2026-05-01 00:00:00+00', p_user_limit => 1) from t_ctx;

-- test: clear a bucket
select is((select tests.begin_turn(org, alice, '10.0.0.1', '2026-05-01 00:00:01+00', p_user_limit => 1) ->> 'outcome' from t_ctx),
  'rate_limit', 'the user bucket is full');
select is((select ops.clear_rate_limit('user:' || alice) from t_ctx), 1, 'clear_rate_limit deletes the bucket');
select is((select tests.begin_turn(org, alice, '10.0.0.1', '2026-05-01 00:00:02+00', p_user_limit => 1) ->> 'outcome' from t_ctx),
  'ok', 'and the user is let through');
select throws_ok($$ select ops.clear_rate_limit('everything') $$, '22023', null, 'a malformed bucket key is refused');

-- test: opt-outs expire, never vanish
create temp table t_opt as select (ops.add_opt_out((select org from t_ctx), null, null, 'pilot paused', 'ops@example.test')).id;
select is((select tests.begin_turn(org, alice, null, now()) ->> 'outcome' from t_ctx), 'opt_out', 'the org-wide opt-out applies');
select isnt((select (ops.expire_opt_out(id, 'ops@example.test')).expires_at from t_opt), null, 'expire sets expires_at');
select is((select tests.begin_turn(org, alice, null, now() + interval '1 second') ->> 'outcome' from t_ctx), 'ok', 'and the org is served again');
select is((select count(*)::int from public.agent_opt_outs o join t_opt using (id) where o.expired_by = 'ops@example.test'), 1,
  'the expired row stays, with who expired it');
select throws_ok($$ select ops.expire_opt_out(gen_random_uuid()) $$, 'P0002', null, 'expiring an unknown id is an error');

-- test: session show and purge
select public.agent_end_turn(s1, org, alice, 'app', 'old question', 'old answer', 60, 20, '2026-05-01 00:00:00+00') from t_ctx;
select public.agent_end_turn(s2, org, alice, 'app', 'new question', 'new answer', 86400, 20, now()) from t_ctx;
select is((select jsonb_array_length(ops.session_show(s1) -> 'messages') from t_ctx), 2, 'session_show lists the messages');
select is((select ops.purge_expired('2026-05-02 00:00:00+00') ->> 'messages_deleted' from t_ctx)::int, 2, 'purge deletes the expired session''s messages');
select is((select count(*)::int from public.agent_sessions, t_ctx where id in (s1, s2)), 2,
  'session rows stay for a while, so an id keeps its owner (expired_session_days)');
select is((select count(*)::int from public.agent_session_messages, t_ctx where session_id = s2), 2, 'live sessions are untouched');

select * from finish();
rollback;
