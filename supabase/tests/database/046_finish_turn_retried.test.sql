-- Recovery: agent_finish_turn sent again after an unknown outcome (the
-- function's durable retry) saves the turn and meters the call once, and
-- completes the Idempotency-Key once; a usage row already there (the first
-- copy landed) means nothing more is saved.
begin;
\ir ../support/pgtap-helpers.psql
select plan(7);

-- setup
create temp table t_ctx as
  select gen_random_uuid() as org, gen_random_uuid() as alice, gen_random_uuid() as s1, now() as t0;
grant select on t_ctx to service_role;
create temp table t_usage as
  select jsonb_build_object('request_id', 'retried-1', 'org_id', org, 'user_id', alice, 'model', 'gpt-4.1-mini',
    'prompt_tokens', 100, 'completion_tokens', 50, 'total_tokens', 150, 'success', true, 'latency_ms', 12,
    'idempotency', jsonb_build_object('key', 'k-retried', 'outcome', 'complete', 'ttl_seconds', 3600,
      'response', jsonb_build_object('message', 'the answer'))) as u
  from t_ctx;
grant select on t_usage to service_role;

-- test: the service role sends the same save twice (service role)
select tests.authenticate_as_service_role();
select ops.idempotency_claim(alice, 'k-retried', 'hash', org, 'retried-1', t0) from t_ctx;
insert into ops.token_reservations (request_id, org_id, user_id, model, tokens, usd, created_at, expires_at)
select 'retried-1', org, alice, 'gpt-4.1-mini', 2000, 0.0024, t0, t0 + interval '10 minutes' from t_ctx;
select is((select public.agent_finish_turn(s1, org, alice, 'app', 'q', 'a', 3600, 20, u) ->> 'outcome' from t_ctx, t_usage),
  'ok', 'the first copy saves the turn');
select is((select public.agent_finish_turn(s1, org, alice, 'app', 'q', 'a', 3600, 20, u) from t_ctx, t_usage)
            - 'expires_at' - 'session_id',
  '{"outcome": "ok", "usage_logged": true, "already_saved": true}'::jsonb,
  'the copy sent again finds it landed: ok, nothing more saved');
select is((select count(*)::int from public.agent_session_messages m, t_ctx where m.session_id = t_ctx.s1), 2,
  'the turn is stored once');
select is((select count(*)::int from public.agent_usage_events where request_id = 'retried-1'), 1, 'metered once');
select is((select billed_events from ops.spend_counters c, t_ctx where c.org_id = t_ctx.org), 1::bigint,
  'and counted once in the spend');
select is((select count(*)::int from ops.token_reservations where request_id = 'retried-1'), 0,
  'the reservation is settled');
select is((select state || ':' || (response ->> 'message') from ops.idempotency_keys k, t_ctx
           where k.user_id = t_ctx.alice and k.idempotency_key = 'k-retried'),
  'completed:the answer', 'the key completes with the answer: a client retry replays it');
select tests.clear_authentication();

select * from finish();
rollback;
