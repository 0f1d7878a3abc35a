-- Tenant policies, read in the begin-turn call: limits over the environment
-- (tenant row, then global row, then the arguments), per-scope windows, the
-- channel: bucket all-or-nothing, switches with their message; operator
-- functions validate and audit every change.
begin;
\ir ../support/pgtap-helpers.psql
select plan(28);

-- setup
create temp table t_ctx as
select gen_random_uuid() as org, gen_random_uuid() as org2, tests.create_user() as alice, tests.create_user() as bob,
       timestamptz '2026-07-01 10:00:00+00' as t0;
select tests.add_member(org, alice), tests.add_member(org2, bob) from t_ctx;
grant select on t_ctx to service_role;

-- test: a tenant's limit overrides the environment's; the global row is the fallback
select ops.policy_set(org, null, '{"user_max_requests": 2}', 'ops@example.test') from t_ctx;
select results_eq(
  $$ select tests.begin_turn(org, alice, null, t0 + make_interval(secs => i), p_user_limit => 100) ->> 'outcome'
     from t_ctx, generate_series(1, 3) i order by i $$,
  array['ok', 'ok', 'rate_limit'], 'the tenant''s user limit (2) applies instead of the argument (100)');
select is((select max_requests from ops.rate_limits, t_ctx where bucket_key = 'user:' || alice), 2, 'and is what the bucket shows');
select ops.policy_set(null, null, '{"user_max_requests": 1, "user_window_seconds": 600}', 'ops@example.test');
select results_eq(
  $$ select tests.begin_turn(org2, bob, null, t0 + make_interval(secs => i), p_user_limit => 100) ->> 'outcome'
     from t_ctx, generate_series(1, 2) i order by i $$,
  array['ok', 'rate_limit'], 'another tenant falls back to the global row (1)');
select is((select (tests.begin_turn(org2, bob, null, t0 + interval '5 minutes', p_user_limit => 100) -> 'rate_limit' ->> 'window_seconds')::int
           from t_ctx), 600, 'with the global row''s window for that scope');
select is((select (tests.begin_turn(org, alice, null, t0 + interval '2 minutes', p_user_limit => 100) -> 'rate_limit' ->> 'limit')::int from t_ctx),
  2, 'a tenant field wins over the global row');
select ops.policy_clear(null, null, 'ops@example.test');
select is((select tests.begin_turn(org2, bob, null, t0 + interval '20 minutes', p_user_limit => 100) ->> 'outcome' from t_ctx),
  'ok', 'once the global row is cleared the environment''s limit applies again, on the next call');
select is((select tests.begin_turn(org, bob, null, t0 + interval '21 minutes', p_user_limit => 100) -> 'rate_limit' ->> 'limit' from t_ctx),
  '100', 'a non-member naming the tenant is held to the global limit, not the tenant''s (its headers would show it)');

-- test: a channel throttle for everyone, all-or-nothing with the other buckets
select ops.policy_set(null, 'whatsapp', '{"channel_max_requests": 2, "channel_window_seconds": 60}', 'incident');
select results_eq(
  $$ select tests.begin_turn(org2, bob, null, t0 + interval '1 hour' + make_interval(secs => i), p_channel => 'whatsapp') ->> 'outcome'
     from t_ctx, generate_series(1, 3) i order by i $$,
  array['ok', 'ok', 'rate_limit'], 'the channel: bucket throttles whatsapp');
select is((select tests.begin_turn(org, alice, null, t0 + interval '1 hour 10 seconds', p_channel => 'whatsapp') -> 'rate_limit' ->> 'scope' from t_ctx),
  'channel', 'for every tenant, and the refusal names the channel scope');
select is((select slot_total from ops.rate_limits, t_ctx where bucket_key = 'org:' || org and updated_at >= t0 + interval '1 hour'), null,
  'the refused request consumed nothing in the other buckets');
select is((select tests.begin_turn(org2, bob, null, t0 + interval '1 hour 10 seconds', p_channel => 'app') ->> 'outcome' from t_ctx),
  'ok', 'other channels are not throttled');
-- one tenant on one channel
select ops.policy_set(org2, 'sms', '{"channel_max_requests": 1}', 'ops') from t_ctx;
select results_eq(
  $$ select tests.begin_turn(org2, bob, null, t0 + interval '2 hours' + make_interval(secs => i), p_channel => 'sms') ->> 'outcome'
     from t_ctx, generate_series(1, 2) i order by i $$,
  array['ok', 'rate_limit'], 'a tenant''s channel limit applies to that tenant');
select ok(exists (select 1 from ops.rate_limits, t_ctx where bucket_key = 'channel:' || org2 || ':sms'),
  'in its own bucket, channel:<org>:<channel>');

-- test: switches
select ops.switch_off(org, 'Call the helpdesk on 0800 000 000.', 'ops@example.test') from t_ctx;
select is((select tests.begin_turn(org, alice, null, t0 + interval '3 hours') - 'member' from t_ctx),
  '{"outcome": "assistant_disabled", "message": "Call the helpdesk on 0800 000 000.", "disabled_scope": "org"}'::jsonb,
  'a tenant switched off gets assistant_disabled with the message');
select is((select count(*)::int from ops.rate_limits, t_ctx where bucket_key = 'user:' || alice and updated_at >= t0 + interval '3 hours'), 0,
  'and pays nothing for it');
select is((select tests.begin_turn(org2, bob, null, t0 + interval '3 hours') ->> 'outcome' from t_ctx), 'ok', 'other tenants are served');
select is((select tests.begin_turn(org, bob, null, t0 + interval '3 hours') ->> 'outcome' from t_ctx), 'forbidden',
  'a non-member does not learn that the tenant is switched off');
select ops.switch_off(null, 'OpenAI is down: human support at help.example.test.', 'oncall');
select is((select tests.begin_turn(org2, bob, null, t0 + interval '3 hours') ->> 'message' from t_ctx),
  'OpenAI is down: human support at help.example.test.', 'the global switch turns off everyone');
select ops.switch_on(null, 'oncall');
select ops.switch_on(org, 'ops@example.test') from t_ctx;
select is((select tests.begin_turn(org, alice, null, t0 + interval '4 hours') ->> 'outcome' from t_ctx), 'ok', 'switched on again');

-- test: validation
select throws_ok($$ select ops.policy_set(null, null, '{"user_max_requestz": 5}') $$, '22023', null, 'an unknown field is refused');
select throws_ok($$ select ops.policy_set(null, null, '{"user_max_requests": 0}') $$, '23514', null, 'a limit must be positive');
select throws_ok($$ select ops.policy_set(null, null, '{"org_window_seconds": 100000}') $$, '23514', null, 'a window is at most a day');
select throws_ok($$ select ops.policy_set(null, 'WhatsApp!', '{"enabled": false}') $$, '22023', null, 'a channel must be a channel');
select throws_ok($$ select ops.policy_set(null, 'whatsapp', '{"user_max_requests": 5}') $$, '23514', null,
  'request limits belong to a tenant or the global row, not a channel row');

-- test: audit and show
select is((select count(*)::int from ops.policy_audit a, t_ctx where a.org_id = t_ctx.org), 3,
  'every change of the tenant is audited (its limit, switch off, switch on)');
select is((select actor || ' ' || action || ' ' || (new_value ->> 'enabled') from ops.policy_audit a, t_ctx
           where a.org_id = t_ctx.org and a.action = 'policy_set' and a.new_value ->> 'enabled' = 'false'),
  'ops@example.test policy_set false', 'with who, what, and the row after (and before)');
select is((select ops.policy_show(org) -> 'effective' -> 'user_max_requests' from t_ctx),
  '{"from": "org", "value": 2}'::jsonb, 'policy_show gives the effective value and where it comes from');

-- test: denials
select tests.authenticate_as((select alice from t_ctx));
select throws_ok($$ select ops.policy_set(null, null, '{"enabled": true}') $$, '42501', null, 'authenticated cannot set a policy');
select tests.clear_authentication();

select * from finish();
rollback;
