-- Opt-outs: org-wide, one member, one channel; expiry honoured; expired
-- rows kept; a refusal costs one user: slot and nothing else; channels are
-- stored as requests carry them.
begin;
\ir ../support/pgtap-helpers.psql
select plan(16);

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
select is((select slot_total from ops.rate_limits, t_ctx where bucket_key = 'user:' || alice), 2,
  'the refused whatsapp call cost one user: slot, as the app call did');
select is((select slot_total from ops.rate_limits, t_ctx where bucket_key = 'org:' || org), 2,
  'and nothing in the org: bucket (it counts the two admitted calls only)');

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

-- test: channels have the request's format; the operator function normalises case
select is((ops.add_opt_out((select org from t_ctx), null, '  SMS ', 'case from a form')).channel, 'sms',
  'ops.add_opt_out stores '' SMS '' as sms');
select is((select tests.begin_turn(org, bob, null, now(), p_channel => 'sms') ->> 'outcome' from t_ctx),
  'opt_out', 'and it matches the requests on sms');
select throws_ok($$ select ops.add_opt_out(gen_random_uuid(), null, 'whats app') $$, '22023', null,
  'a channel no request can carry is refused by the function');
select throws_ok($$ insert into public.agent_opt_outs (org_id, channel) values (gen_random_uuid(), 'SMS') $$, '23514', null,
  'and by the table (check constraint), for a direct insert');
select throws_ok(format($$ insert into public.agent_opt_outs (org_id, channel) values (gen_random_uuid(), %L) $$, E'web\n'), '23514', null,
  'a trailing newline included');

select * from finish();
rollback;
