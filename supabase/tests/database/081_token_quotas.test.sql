-- Token quotas: the turn reserves its worst case at admission, in the same
-- decision as the request buckets; its usage row settles the reservation
-- with the real tokens; an abandoned reservation stops counting at its
-- expiry; a refusal is rate_limit scope tokens with a retry-after.
begin;
\ir ../support/pgtap-helpers.psql
select plan(16);

-- setup: org quota 1,000 tokens a minute, user quota 5,000 a day
create temp table t_ctx as
select gen_random_uuid() as org, tests.create_user() as alice, tests.create_user() as bob, now() as t0;
select tests.add_member(org, alice), tests.add_member(org, bob) from t_ctx;
select ops.policy_set(org, null, '{"org_tokens_per_minute": 1000, "user_tokens_per_day": 5000}', 'test') from t_ctx;
create function pg_temp.turn(p_user uuid, p_request text, p_reserve int, p_at timestamptz) returns jsonb language sql as $$
  select public.agent_begin_turn(p_org_id => (select org from t_ctx), p_user_id => p_user, p_request_id => p_request,
    p_reserve_tokens => p_reserve, p_model => 'gpt-4.1-mini', p_now => p_at);
$$;

-- test: reservations
select is((select pg_temp.turn(alice, 'q1', 400, t0) ->> 'reserved_tokens' from t_ctx), '400', 'a turn reserves its worst case');
select is((select tokens from ops.token_reservations where request_id = 'q1'), 400, 'as an open reservation');
select is((select pg_temp.turn(bob, 'q2', 400, t0 + interval '1 second') ->> 'outcome' from t_ctx), 'ok', '800 of 1,000 reserved');
create temp table t_refused as select pg_temp.turn(alice, 'q3', 400, t0 + interval '2 seconds') as r from t_ctx;
select is((select r ->> 'outcome' from t_refused), 'rate_limit', 'a third turn of 400 would exceed the org''s minute: refused');
select is((select r -> 'rate_limit' ->> 'scope' from t_refused), 'tokens', 'naming the tokens scope');
select ok((select (r -> 'rate_limit' ->> 'retry_after_seconds')::int between 1 and 300 from t_refused),
  'with a retry-after bounded by the reservations'' expiry');
select is((select count(*)::int from ops.token_reservations where request_id = 'q3'), 0, 'a refused turn reserves nothing');
select is((select count(*)::int from ops.rate_limits, t_ctx where bucket_key = 'user:' || alice and slot_total = 1), 1,
  'and consumes no request bucket');

-- test: settlement with the real usage
select public.agent_log_usage(jsonb_build_object('request_id', 'q1', 'org_id', org, 'user_id', alice, 'model', 'gpt-4.1-mini',
  'prompt_tokens', 100, 'completion_tokens', 50, 'total_tokens', 150, 'success', true, 'created_at', t0 + interval '3 seconds'))
from t_ctx;
select is((select count(*)::int from ops.token_reservations where request_id = 'q1'), 0, 'the usage row settles the reservation');
select is((select ops.tokens_used('org:' || org || ':minute', 60, t0 + interval '4 seconds') from t_ctx), 150::bigint,
  'and its real tokens count in the org''s minute');
select is((select ops.tokens_used('user:' || alice || ':day', 86400, t0 + interval '4 seconds') from t_ctx), 150::bigint,
  'and in the user''s day');
select is((select pg_temp.turn(alice, 'q4', 400, t0 + interval '5 seconds') ->> 'outcome' from t_ctx), 'ok',
  '150 used + 400 reserved + 400 fits now');

-- test: an abandoned reservation stops counting at its expiry
select is((select pg_temp.turn(alice, 'q5', 400, t0 + interval '6 seconds') ->> 'outcome' from t_ctx), 'rate_limit',
  'full while q2 and q4 are open');
select is((select pg_temp.turn(alice, 'q6', 400, t0 + interval '6 minutes') ->> 'outcome' from t_ctx), 'ok',
  'after the reservations expired (300 s) and the minute passed, room again');

-- test: a turn larger than the quota can never pass; its retry-after is the window
select is((select pg_temp.turn(bob, 'huge', 5001, t0 + interval '7 minutes') -> 'rate_limit' ->> 'retry_after_seconds' from t_ctx),
  '86400', 'a worst case over both quotas is refused with the longer window as retry-after');

-- test: denials
select tests.authenticate_as_anon();
select throws_ok($$ select ops.tokens_used('org:x:minute', 60) $$, '42501', null, 'anon cannot read token counters');
select tests.clear_authentication();

select * from finish();
rollback;
