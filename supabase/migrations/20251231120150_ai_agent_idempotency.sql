-- agent-chat: idempotent retries (the Idempotency-Key request header).
--
-- A key belongs to one user (the token's user, or the user a service caller
-- asserts). Its life, decided inside the calls the Edge Function already
-- makes, so a key costs no extra round trip:
--
--   agent_begin_turn   ops.idempotency_check first (before any check or
--                      bucket): a stored answer is replayed, a different
--                      request hash is idempotency_mismatch, a claim still
--                      running is request_in_progress; otherwise the turn
--                      goes on, and when it is admitted ops.idempotency_claim
--                      records the key as running (a refused turn holds no key).
--   agent_log_usage    (also inside agent_finish_turn, and agent_settle_usage
--                      with the usage log off) ops.idempotency_settle:
--                      the usage row of the attempt completes the key with
--                      the answer, or releases it when the attempt failed so
--                      the retry runs.
--
-- A completed key is kept for the session TTL from its answer; a running
-- claim whose attempt never ended (isolate killed) lapses after its lease.
-- Expired rows are overwritten by the next claim and deleted by
-- ops.purge_expired.

-- ---------------------------------------------------------------------------
-- ops.idempotency_keys
-- ---------------------------------------------------------------------------
create table ops.idempotency_keys (
  user_id uuid not null,
  idempotency_key text not null check (char_length(idempotency_key) between 1 and 255),
  request_hash text not null,
  org_id uuid,
  request_id text not null,
  state text not null check (state in ('running', 'completed')),
  response jsonb,
  created_at timestamptz not null,
  completed_at timestamptz,
  expires_at timestamptz not null,
  primary key (user_id, idempotency_key)
);
comment on table ops.idempotency_keys is
  'agent-chat Idempotency-Key claims, one row per (user, key): running while the first attempt runs, completed with its answer for the session TTL. Written only by agent_begin_turn and agent_log_usage; ops.purge_expired deletes expired rows.';
comment on column ops.idempotency_keys.request_hash is
  'SHA-256 (hex) of the validated request fields that define the turn: org, session, channel, message, metadata. A retry with another hash is idempotency_mismatch.';
comment on column ops.idempotency_keys.request_id is
  'The server request id of the attempt that holds (running) or answered (completed) the key; only that attempt settles it.';
comment on column ops.idempotency_keys.response is
  'The stored answer, replayed as the JSON body (or as one SSE delta): session_id, message, usage, model, request_id of the first attempt.';
comment on column ops.idempotency_keys.expires_at is
  'running: end of the lease (the attempt is presumed dead after it); completed: answer time + the session TTL. An expired row counts as absent.';
create index idempotency_keys_expires_at_idx on ops.idempotency_keys (expires_at);
alter table ops.idempotency_keys enable row level security;
revoke all on ops.idempotency_keys from public, anon, authenticated;
grant select, insert, update, delete on ops.idempotency_keys to service_role;

-- ---------------------------------------------------------------------------
-- ops.idempotency_check: the first step of agent_begin_turn when a key is sent.
-- ---------------------------------------------------------------------------
create function ops.idempotency_check(
  p_user_id uuid,
  p_key text,
  p_request_hash text,
  p_now timestamptz default now()
)
returns jsonb
language plpgsql
set search_path = ''
as $$
declare
  v_row ops.idempotency_keys%rowtype;
begin
  if p_user_id is null or p_request_hash is null or char_length(p_key) not between 1 and 255 then
    raise exception 'idempotency: user_id, a key of 1 to 255 characters and a request hash are required'
      using errcode = '22023';
  end if;
  -- Duplicates of one (user, key) queue here until the first one's
  -- transaction ends, so the second sees the first's claim (or its absence
  -- when the first was refused). Released at commit.
  perform pg_advisory_xact_lock(hashtextextended('agent-chat:idempotency:' || p_user_id || ':' || p_key, 0));

  select k.* into v_row
  from ops.idempotency_keys k
  where k.user_id = p_user_id and k.idempotency_key = p_key and k.expires_at > p_now;
  if not found then
    return null;
  end if;
  if v_row.request_hash <> p_request_hash then
    return jsonb_build_object('outcome', 'idempotency_mismatch');
  end if;
  if v_row.state = 'running' then
    return jsonb_build_object('outcome', 'request_in_progress', 'retry_after_seconds', 1,
                              'request_id', v_row.request_id);
  end if;
  return jsonb_build_object('outcome', 'replay', 'response', v_row.response);
end;
$$;
comment on function ops.idempotency_check(uuid, text, text, timestamptz) is
  'agent_begin_turn''s first step for an Idempotency-Key: waits for a concurrent duplicate''s begin-turn to end, then returns NULL (the key is free or expired), {outcome: replay, response}, {outcome: idempotency_mismatch} or {outcome: request_in_progress, retry_after_seconds}.';

-- ---------------------------------------------------------------------------
-- ops.idempotency_claim: agent_begin_turn's last step when the turn is admitted.
-- ---------------------------------------------------------------------------
create function ops.idempotency_claim(
  p_user_id uuid,
  p_key text,
  p_request_hash text,
  p_org_id uuid,
  p_request_id text,
  p_now timestamptz default now(),
  p_lease interval default interval '10 minutes'
)
returns void
language plpgsql
set search_path = ''
as $$
begin
  -- Only an expired row can be here (ops.idempotency_check passed under the
  -- same lock): it is taken over.
  insert into ops.idempotency_keys as k (
    user_id, idempotency_key, request_hash, org_id, request_id, state, response,
    created_at, completed_at, expires_at
  )
  values (p_user_id, p_key, p_request_hash, p_org_id, coalesce(p_request_id, ''), 'running', null,
          p_now, null, p_now + p_lease)
  on conflict (user_id, idempotency_key) do update
  set request_hash = excluded.request_hash,
      org_id = excluded.org_id,
      request_id = excluded.request_id,
      state = 'running',
      response = null,
      created_at = excluded.created_at,
      completed_at = null,
      expires_at = excluded.expires_at;
end;
$$;
comment on function ops.idempotency_claim(uuid, text, text, uuid, text, timestamptz, interval) is
  'Records an admitted turn''s Idempotency-Key as running for p_lease (longer than the Edge Function''s wall-clock limit), after which an attempt that never settled is presumed dead and the key is free again.';

-- ---------------------------------------------------------------------------
-- ops.idempotency_settle: called by agent_log_usage with the attempt's usage event.
-- ---------------------------------------------------------------------------
create function ops.idempotency_settle(p_event jsonb, p_now timestamptz default now())
returns void
language plpgsql
set search_path = ''
as $$
declare
  v_settle jsonb := p_event -> 'idempotency';
  v_user_id uuid;
begin
  -- Never fails the usage insert it runs beside: an event without a usable
  -- settlement settles nothing.
  if jsonb_typeof(v_settle) is distinct from 'object' or p_event ->> 'user_id' !~* '^[0-9a-f-]{36}$' then
    return;
  end if;
  v_user_id := (p_event ->> 'user_id')::uuid;
  if v_settle ->> 'outcome' = 'complete' then
    update ops.idempotency_keys k
    set state = 'completed',
        response = v_settle -> 'response',
        completed_at = p_now,
        expires_at = p_now + make_interval(secs => greatest(coalesce((v_settle ->> 'ttl_seconds')::integer, 86400), 60))
    where k.user_id = v_user_id
      and k.idempotency_key = v_settle ->> 'key'
      and k.request_id = p_event ->> 'request_id'
      and k.state = 'running';
  elsif v_settle ->> 'outcome' = 'release' then
    delete from ops.idempotency_keys k
    where k.user_id = v_user_id
      and k.idempotency_key = v_settle ->> 'key'
      and k.request_id = p_event ->> 'request_id'
      and k.state = 'running';
  end if;
end;
$$;
comment on function ops.idempotency_settle(jsonb, timestamptz) is
  'Settles the Idempotency-Key of a usage event''s attempt ({idempotency: {key, outcome: complete|release, response, ttl_seconds}} beside the event''s user_id and request_id): complete stores the answer for ttl_seconds, release frees the key so a retry runs. Only the attempt that holds the claim settles it.';

-- ---------------------------------------------------------------------------
-- ops.purge_idempotency_keys: part of ops.purge_expired.
-- ---------------------------------------------------------------------------
create function ops.purge_idempotency_keys(p_now timestamptz default now())
returns jsonb
language plpgsql
set search_path = ''
as $$
declare
  v_keys integer;
begin
  delete from ops.idempotency_keys k where k.expires_at <= p_now;
  get diagnostics v_keys = row_count;
  return jsonb_build_object('idempotency_keys_deleted', v_keys);
end;
$$;
comment on function ops.purge_idempotency_keys(timestamptz) is
  'Deletes expired Idempotency-Key rows (answers past the session TTL, lapsed claims). Run by ops.purge_expired.';

-- ---------------------------------------------------------------------------
-- Privileges of every function above, in one statement each (checked by
-- supabase/tests/database/004_privileges_inventory.test.sql): service_role
-- alone may execute them.
-- ---------------------------------------------------------------------------
revoke execute on function
  ops.idempotency_check(uuid, text, text, timestamptz),
  ops.idempotency_claim(uuid, text, text, uuid, text, timestamptz, interval),
  ops.idempotency_settle(jsonb, timestamptz),
  ops.purge_idempotency_keys(timestamptz)
from public, anon, authenticated;
grant execute on function
  ops.idempotency_check(uuid, text, text, timestamptz),
  ops.idempotency_claim(uuid, text, text, uuid, text, timestamptz, interval),
  ops.idempotency_settle(jsonb, timestamptz),
  ops.purge_idempotency_keys(timestamptz)
to service_role;
