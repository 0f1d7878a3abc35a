-- Retention (ops.retention_settings) applied by ops.purge_expired on
-- back-dated rows: after usage_personal_days a usage row keeps the address
-- block of its IP and loses client metadata (a street address, a phone
-- number); after usage_row_months it is deleted; expired sessions lose their
-- messages, then the row; every step is bounded by batch_rows; the settings
-- are audited.
begin;
\ir ../support/pgtap-helpers.psql
select plan(22);

-- setup
create temp table t_ctx as select gen_random_uuid() as org, tests.create_user() as alice, gen_random_uuid() as s_old,
  gen_random_uuid() as s_recent, timestamptz '2026-06-01 00:00:00+00' as now;
grant select on t_ctx to service_role;
select tests.add_member(org, alice) from t_ctx;
insert into public.agent_usage_events (request_id, org_id, user_id, model, total_tokens, success, metadata, created_at)
select 'ret-' || r.name, t.org, t.alice, 'gpt-4.1-mini', 10, true,
       jsonb_build_object('store', 'supabase', 'client_ip', r.ip, 'client_request_id', 'abc',
                          'client', jsonb_build_object('address', 'KG 11 Ave 7, Kigali', 'phone', '+250788123456')),
       t.now - r.age
from t_ctx t, (values ('fresh', '10.20.30.40', interval '2 days'),
                      ('old', '10.20.30.40', interval '31 days'),
                      ('old6', '2001:DB8:0:12:abcd::1', interval '40 days'),
                      ('ancient', '192.168.7.9', interval '400 days')) r (name, ip, age);
insert into public.agent_usage_events (request_id, user_id, success, error_code, event_count, metadata, created_at)
select 'ret-anon', null, false, 'anonymous_refusals', 5,
       '{"aggregated": true, "top_ips": [{"ip": "203.0.113.9", "count": 4}, {"ip": "2001:db8::7", "count": 1}]}', now - interval '35 days'
from t_ctx;
select public.agent_end_turn(s_old, org, alice, 'app', 'q', 'a', 60, 20, now - interval '40 days') from t_ctx;
select public.agent_end_turn(s_recent, org, alice, 'app', 'q', 'a', 60, 20, now - interval '2 days') from t_ctx;

-- test: the address block mirrors _shared/client-ip.ts
select is(ops.address_block('10.20.30.40'), '10.20.30.0/24', 'IPv4: its /24');
select is(ops.address_block('2001:db8:0:12:abcd::1'), '2001:db8:0:12::/64', 'IPv6: its /64, as client-ip.ts writes it');
select is(ops.address_block('::ffff:10.1.2.3'), '10.1.2.0/24', 'a mapped IPv4 is IPv4');
select is(ops.address_block('not an ip'), null, 'anything else has no block');

-- test: one purge at the back-dated clock, as service_role
select tests.authenticate_as_service_role();
create temp table t_purge as select ops.purge_expired((select now from t_ctx)) as result;
select tests.clear_authentication();
select is((select metadata from public.agent_usage_events where request_id = 'ret-fresh') -> 'client' ->> 'phone', '+250788123456',
  'a 2-day-old row keeps its client metadata');
select is((select metadata ->> 'client_ip_block' from public.agent_usage_events where request_id = 'ret-old'), '10.20.30.0/24',
  'a 31-day-old row keeps only the address block of its IP');
select ok((select not (metadata ?| array['client', 'client_ip', 'client_request_id']) and metadata::text !~ 'Kigali|788123456|10\.20\.30\.40'
           from public.agent_usage_events where request_id = 'ret-old'),
  'and neither the address nor the phone number nor the IP');
select is((select metadata ->> 'client_ip_block' from public.agent_usage_events where request_id = 'ret-old6'), '2001:db8:0:12::/64',
  'an IPv6 row keeps its /64');
select is((select metadata -> 'top_ip_blocks' from public.agent_usage_events where request_id = 'ret-anon'),
  '[{"block": "203.0.113.0/24", "count": 4}, {"block": "2001:db8:0:0::/64", "count": 1}]'::jsonb,
  'an aggregated refusal row keeps its top IPs as blocks');
select is((select count(*)::int from public.agent_usage_events where request_id = 'ret-ancient'), 0,
  'a 400-day-old row is deleted (13 months)');
select is((select total_tokens from public.agent_usage_events where request_id = 'ret-old'), 10, 'tokens stay');
select is((select count(*)::int from public.agent_session_messages m, t_ctx where m.session_id = s_recent), 0,
  'the messages of a session expired 2 days ago are deleted');
select is((select count(*)::int from public.agent_sessions s, t_ctx where s.id = s_recent), 1,
  'its row stays (the id stays its owner''s for expired_session_days)');
select is((select count(*)::int from public.agent_sessions s, t_ctx where s.id = s_old), 0,
  'a session expired 40 days ago is deleted');

-- test: bounded batches
select ops.retention_set('{"batch_rows": 1}', 'test');
insert into public.agent_usage_events (request_id, org_id, success, metadata, created_at)
select 'ret-batch-' || i, org, true, '{"client_ip": "10.9.9.9"}', now - interval '50 days' from t_ctx, generate_series(1, 3) i;
select is((select (ops.purge_expired(now) ->> 'usage_events_scrubbed')::int from t_ctx), 1, 'one call scrubs at most batch_rows rows');
select is((select ops.purge_expired(now) ->> 'more' from t_ctx), 'true', 'and says there is more');
select is((select count(*)::int from public.agent_usage_events where request_id like 'ret-batch-%' and metadata ? 'client_ip'), 1,
  'the rest waits for the next call');

-- test: the index the scrub reads and the scrub's own filter name exactly the personal keys
select is((select pg_get_expr(i.indpred, i.indrelid) from pg_index i
           where i.indexrelid = 'public.agent_usage_events_personal_idx'::regclass),
  (select '(metadata ?| ARRAY[' || string_agg(quote_literal(k) || '::text', ', ') || '])'
   from unnest(ops.personal_metadata_keys()) k),
  'the partial index is over exactly ops.personal_metadata_keys()');
select ok((select position((select 'metadata ?| array[' || string_agg(quote_literal(k), ', ') || ']'
                            from unnest(ops.personal_metadata_keys()) k) in p.prosrc) > 0
           from pg_proc p where p.oid = 'ops.purge_expired(timestamptz, interval, integer)'::regprocedure),
  'and ops.purge_expired filters with the same list (so the index serves it)');

-- test: settings are audited and checked
select is((select actor || ' ' || action || ' ' || (new_value ->> 'batch_rows') from ops.policy_audit
           where action = 'retention_set' order by id desc limit 1), 'test retention_set 1', 'ops.retention_set is audited');
update ops.retention_settings set usage_personal_days = 14;
select is((select action from ops.policy_audit order by id desc limit 1), 'direct_update on retention_settings',
  'a plain SQL change is audited too');
select throws_ok($$ select ops.retention_set('{"keep_forever": true}') $$, '22023', null, 'an unknown setting is refused');

select * from finish();
rollback;
