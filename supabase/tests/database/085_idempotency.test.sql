-- Idempotency-Key: claimed in agent_begin_turn before any bucket, replayed,
-- refused on a different body or while running, settled by the usage row
-- (complete or release), expired after the TTL or the lease, purged, and
-- closed to anon and authenticated.
begin;
\ir ../support/pgtap-helpers.psql
select plan(32);

-- setup
create temp table t_ctx as
select gen_random_uuid() as org, tests.create_user() as alice, tests.create_user() as bob,
       tests.create_user() as carol, '2026-06-01 10:00:00+00'::timestamptz as t0;
select tests.add_member(org, alice), tests.add_member(org, bob) from t_ctx;
grant select on t_ctx to service_role;

create function tests.keyed_turn(p_user uuid, p_key text, p_hash text, p_request text, p_now timestamptz)
returns jsonb language sql as $$
  select public.agent_begin_turn(
    p_org_id => (select org from t_ctx), p_user_id => p_user, p_client_ip => '10.9.9.9',
    p_org_limit => 100, p_user_limit => 100, p_ip_limit => 100, p_window_seconds => 3600,
    p_now => p_now, p_idempotency_key => p_key, p_request_hash => p_hash, p_request_id => p_request);
$$;
grant execute on function tests.keyed_turn(uuid, text, text, text, timestamptz) to service_role;

create function tests.settle(p_user uuid, p_key text, p_request text, p_outcome text, p_now timestamptz)
returns void language sql as $$
  select ops.idempotency_settle(jsonb_build_object(
    'request_id', p_request, 'user_id', p_user, 'success', p_outcome = 'complete',
    'idempotency', jsonb_build_object('key', p_key, 'outcome', p_outcome, 'ttl_seconds', 3600,
      'response', jsonb_build_object('session_id', gen_random_uuid(), 'message', 'stored answer', 'request_id', p_request))),
    p_now);
$$;
grant execute on function tests.settle(uuid, text, text, text, timestamptz) to service_role;

create function tests.user_bucket(p_user uuid) returns integer language sql as $$
  select coalesce((select r.slot_total from ops.rate_limits r where r.bucket_key = 'user:' || p_user), 0);
$$;

select tests.authenticate_as_service_role();

-- test: the first attempt claims the key and is admitted
select is((select tests.keyed_turn(alice, 'k-1', 'hash-a', 'req-1', t0) ->> 'outcome' from t_ctx), 'ok',
  'a new key: the turn is admitted');
select is((select state || ':' || request_id from ops.idempotency_keys k, t_ctx where k.user_id = alice and k.idempotency_key = 'k-1'),
  'running:req-1', 'and the key is running, held by its request');
select is((select expires_at from ops.idempotency_keys k, t_ctx where k.user_id = alice and k.idempotency_key = 'k-1'),
  '2026-06-01 10:10:00+00'::timestamptz, 'for a lease of 10 minutes');

-- test: duplicates while it runs
select is((select tests.keyed_turn(alice, 'k-1', 'hash-a', 'req-2', t0 + interval '1 second') - 'rate_limit' from t_ctx),
  '{"outcome": "request_in_progress", "member": true, "request_id": "req-1", "retry_after_seconds": 1}'::jsonb,
  'the same key and body while running: request_in_progress with a retry-after');
select is((select tests.keyed_turn(alice, 'k-1', 'hash-b', 'req-3', t0 + interval '1 second') ->> 'outcome' from t_ctx),
  'idempotency_mismatch', 'the same key with another body: idempotency_mismatch');
select is((select tests.user_bucket(alice) from t_ctx), 2,
  'the 422 costs one user: slot like every refusal; the 409 (a protocol retry) does not eat the user''s questions');
select is((select r.slot_total from ops.rate_limits r, t_ctx where r.bucket_key = 'replay:' || alice), 1,
  'but it takes a slot of the user''s replay: bucket');
select is((select tests.keyed_turn(bob, 'k-1', 'hash-b', 'req-4', t0) ->> 'outcome' from t_ctx), 'ok',
  'keys are per user: another user''s k-1 is its own');

-- test: completing stores the answer; a retry replays it
select tests.settle(alice, 'k-1', 'req-2', 'complete', t0 + interval '2 seconds') from t_ctx;
select is((select state from ops.idempotency_keys k, t_ctx where k.user_id = alice and k.idempotency_key = 'k-1'),
  'running', 'another request cannot settle the claim');
select public.agent_log_usage(jsonb_build_object(
  'request_id', 'req-1', 'org_id', org, 'user_id', alice, 'success', true, 'latency_ms', 5, 'total_tokens', 9,
  'idempotency', jsonb_build_object('key', 'k-1', 'outcome', 'complete', 'ttl_seconds', 3600,
    'response', jsonb_build_object('message', 'the answer', 'request_id', 'req-1'))))
from t_ctx;
select is((select state || ':' || (response ->> 'message') from ops.idempotency_keys k, t_ctx where k.user_id = alice and k.idempotency_key = 'k-1'),
  'completed:the answer', 'the usage row of the attempt completes the key with its answer');
select is((select count(*)::int from public.agent_usage_events where request_id = 'req-1'), 1,
  'and the usage row itself is written');
select is((select tests.keyed_turn(alice, 'k-1', 'hash-a', 'req-5', now() + interval '1 minute') - 'rate_limit' from t_ctx),
  '{"outcome": "replay", "member": true, "response": {"message": "the answer", "request_id": "req-1"}}'::jsonb,
  'a retry with the same body replays the stored answer');
select is((select r.slot_total from ops.rate_limits r, t_ctx where r.bucket_key = 'replay:' || alice), 1,
  'and takes a slot of the replay: bucket (of this later window): replays are not free traffic');
select is((select tests.keyed_turn(alice, 'k-1', 'hash-b', 'req-6', now() + interval '1 minute') ->> 'outcome' from t_ctx),
  'idempotency_mismatch', 'another body under a completed key: idempotency_mismatch');
select ok((select expires_at > now() + interval '59 minutes' and expires_at <= now() + interval '1 hour'
           from ops.idempotency_keys k, t_ctx where k.user_id = alice and k.idempotency_key = 'k-1'),
  'a completed key is kept for ttl_seconds from its answer');

-- test: a failed attempt releases the key and the retry runs
select tests.keyed_turn(alice, 'k-2', 'hash-a', 'req-7', t0) from t_ctx;
select tests.settle(alice, 'k-2', 'req-7', 'release', t0 + interval '3 seconds') from t_ctx;
select is((select count(*)::int from ops.idempotency_keys k, t_ctx where k.user_id = alice and k.idempotency_key = 'k-2'), 0,
  'release deletes the claim');
select is((select tests.keyed_turn(alice, 'k-2', 'hash-a', 'req-8', t0 + interval '4 seconds') ->> 'outcome' from t_ctx), 'ok',
  'and the retry is admitted as a new attempt');

-- test: agent_finish_turn completes the key with the saved turn (Supabase store)
select is((select public.agent_finish_turn(gen_random_uuid(), org, alice, 'app', 'q', 'a', 3600, 20,
  jsonb_build_object('request_id', 'req-8', 'org_id', org, 'user_id', alice, 'success', true, 'latency_ms', 3,
    'idempotency', jsonb_build_object('key', 'k-2', 'outcome', 'complete', 'ttl_seconds', 3600,
      'response', jsonb_build_object('message', 'finished')))) ->> 'usage_logged' from t_ctx),
  'true', 'finish-turn logs the usage row');
select is((select state from ops.idempotency_keys k, t_ctx where k.user_id = alice and k.idempotency_key = 'k-2'),
  'completed', 'and completes the key in the same call');

-- test: with the usage log off, the settlement alone writes no usage row
select tests.keyed_turn(alice, 'k-3', 'hash-a', 'req-9', t0) from t_ctx;
select public.agent_settle_usage(jsonb_build_object('request_id', 'req-9', 'user_id', alice,
  'idempotency', jsonb_build_object('key', 'k-3', 'outcome', 'complete', 'ttl_seconds', 60, 'response', '{}'::jsonb))) from t_ctx;
select is((select state from ops.idempotency_keys k, t_ctx where k.user_id = alice and k.idempotency_key = 'k-3'),
  'completed', 'agent_settle_usage completes the key');
select is((select count(*)::int from public.agent_usage_events where request_id = 'req-9'), 0, 'without a usage row');

-- test: a refused turn holds no key
select is((select tests.keyed_turn(carol, 'k-4', 'hash-a', 'req-10', t0) ->> 'outcome' from t_ctx), 'forbidden',
  'a non-member is refused');
select is((select count(*)::int from ops.idempotency_keys k, t_ctx where k.user_id = carol), 0, 'and holds no key');
select is((select public.agent_begin_turn(p_org_id => org, p_user_id => alice, p_user_limit => 1, p_window_seconds => 3600,
  p_now => t0 + interval '5 seconds', p_idempotency_key => 'k-5', p_request_hash => 'hash-a', p_request_id => 'req-11') ->> 'outcome' from t_ctx),
  'rate_limit', 'a rate-limited turn is refused');
select is((select count(*)::int from ops.idempotency_keys k, t_ctx where k.user_id = alice and k.idempotency_key = 'k-5'), 0,
  'and holds no key either, so its retry can run');

-- test: expiry
select tests.keyed_turn(alice, 'k-6', 'hash-a', 'req-12', t0) from t_ctx;
select is((select tests.keyed_turn(alice, 'k-6', 'hash-b', 'req-13', t0 + interval '11 minutes') ->> 'outcome' from t_ctx), 'ok',
  'a claim whose attempt never settled lapses after its lease');
select is((select request_id || ':' || request_hash from ops.idempotency_keys k, t_ctx where k.user_id = alice and k.idempotency_key = 'k-6'),
  'req-13:hash-b', 'and the key is taken over by the new attempt');
select ok((select (ops.purge_expired('2100-01-01') ->> 'idempotency_keys_deleted')::int >= 5),
  'ops.purge_expired deletes expired keys');
select is((select count(*)::int from ops.idempotency_keys), 0, 'none is left');
select tests.clear_authentication();

-- test: anon and authenticated
select tests.authenticate_as_anon();
select throws_ok($$select public.agent_settle_usage('{}'::jsonb)$$, '42501', null,
  'anon calling agent_settle_usage is denied');
select tests.clear_authentication();
select tests.authenticate_as((select alice from t_ctx));
select throws_ok($$select public.agent_settle_usage('{}'::jsonb)$$, '42501', null,
  'authenticated calling agent_settle_usage is denied');
select throws_ok($$select count(*) from ops.idempotency_keys$$, '42501', null,
  'authenticated cannot read the keys');
select tests.clear_authentication();

select * from finish();
rollback;
