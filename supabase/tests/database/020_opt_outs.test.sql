-- Opt-outs: org-wide, one member, one channel; expiry honoured; expired
-- rows kept; nothing consumed when refused.
begin;
\ir ../support/pgtap-helpers.psql
select plan(10);

-- setup
create temp table t_ctx as
select gen_random_uuid() as org, gen_random_uuid() as org2, tests.create_user() as alice, tests.create_user() as bob;
select tests.add_member(org, alice), tests.add_member(org, bob), tests.add_member(org2, alice) from t_ctx;

-- test: member opt-out on whatsapp only
select ops.add_opt_out(org, alice, 'whatsapp', 'asked by SMS', 'ops@example.test') from t_ctx;
select is((select tests.begin_turn(org, alice, null, '2026-04-01 00:00:00+00', p_channel => 'whatsapp') ->> 'outcome' from t_ctx),
  'opt_out', 'alice is refused on whatsapp');
select is((select tests.begin_turn(org, alice, null, '2026-04-01 00:00:00+00', p_channel => 'app') ->> 'outcome' from t_ctx),
  'ok', 'but served in the app');
select is((select tests.begin_turn(org, bob, null, '2026-04-01 00:00:00+00', p_channel => 'whatsapp') ->> 'outcome' from t_ctx),
  'ok', 'and bob is not affected');
select is((select count(*)::int from ops.rate_limits, t_ctx where bucket_key = 'user:' || alice and slot_total = 1), 1,
  'the refused whatsapp call consumed nothing (only the app call counted)');

-- org-wide, all channels, with an expiry
select ops.add_opt_out(org2, null, null, 'tenant paused', 'ops', '2026-04-02 00:00:00+00') from t_ctx;
select is((select tests.begin_turn(org2, alice, null, '2026-04-01 12:00:00+00') ->> 'outcome' from t_ctx),
  'opt_out', 'an org-wide opt-out covers every member and channel');
select is((select tests.begin_turn(org2, alice, null, '2026-04-01 12:00:00+00') ->> 'opt_out_scope' from t_ctx),
  'org', 'and says it is org-wide');
select is((select tests.begin_turn(org2, alice, null, '2026-04-02 00:00:00+00') ->> 'outcome' from t_ctx),
  'ok', 'at its expiry it no longer applies');

-- expire the member opt-out: kept for audit, no longer active
select ops.expire_opt_out(o.id, 'support', '2026-04-01 06:00:00+00')
from public.agent_opt_outs o, t_ctx where o.user_id = t_ctx.alice and o.org_id = t_ctx.org;
select is((select tests.begin_turn(org, alice, null, '2026-04-01 07:00:00+00', p_channel => 'whatsapp') ->> 'outcome' from t_ctx),
  'ok', 'an expired opt-out is ignored');
select is((select count(*)::int from public.agent_opt_outs o, t_ctx where o.org_id in (t_ctx.org, t_ctx.org2)), 2,
  'and both rows are kept');
select is((select expired_by from public.agent_opt_outs o, t_ctx where o.user_id = t_ctx.alice and o.org_id = t_ctx.org),
  'support', 'with who expired it');

select * from finish();
rollback;
