-- agent-chat: sessions, memberships, opt-outs, rate limits and the usage log.
--
-- Everything that must be atomic happens here, in one function call per
-- request (public.agent_begin_turn) and one per answered turn
-- (public.agent_end_turn). Usage is one insert per request
-- (public.agent_log_usage). Only service_role may execute those three.

create extension if not exists pgcrypto with schema extensions;

create schema if not exists ops;
comment on schema ops is
  'agent-chat internals: rate-limit buckets, prices, budgets, alerts and operator functions. Not exposed through the Data API.';
revoke all on schema ops from public, anon, authenticated;
grant usage on schema ops to service_role;

-- ---------------------------------------------------------------------------
-- Membership: a user may act only for an org it belongs to.
-- Created when absent; an existing public.org_memberships with at least
-- (org_id uuid, user_id uuid) is used as it is and left untouched.
-- ---------------------------------------------------------------------------
do $$
begin
  if to_regclass('public.org_memberships') is null then
    create table public.org_memberships (
      org_id uuid not null,
      user_id uuid not null references auth.users (id) on delete cascade,
      role text not null default 'member',
      created_at timestamptz not null default now(),
      primary key (org_id, user_id)
    );
    comment on table public.org_memberships is
      'Which users belong to which organization. agent-chat refuses (403 forbidden) a user acting for an org it is not a member of.';
    comment on column public.org_memberships.role is 'Free-form role inside the org (member, admin, ...). agent-chat only checks membership.';
    create index org_memberships_user_id_idx on public.org_memberships (user_id);
    alter table public.org_memberships enable row level security;
    create policy org_memberships_select_own on public.org_memberships
      for select to authenticated using (user_id = (select auth.uid()));
    revoke all on public.org_memberships from anon, authenticated;
    grant select on public.org_memberships to authenticated;
  end if;
end
$$;

-- The lookup agent_begin_turn makes; harmless if the table already has it.
create index if not exists org_memberships_org_user_lookup_idx
  on public.org_memberships (org_id, user_id);

-- ---------------------------------------------------------------------------
-- Sessions: one row per conversation, messages in a child table so a turn is
-- an append (insert), never a read-modify-write of the whole history.
-- ---------------------------------------------------------------------------
create table public.agent_sessions (
  id uuid primary key default gen_random_uuid(),
  org_id uuid not null,
  user_id uuid not null,
  channel text not null default 'app',
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now(),
  expires_at timestamptz not null
);
comment on table public.agent_sessions is
  'Conversations stored by agent-chat when AI_AGENT_SESSION_STORE=supabase. A session id belongs to its first (org, user) for good; the row outlives its expiry so the id cannot be taken over.';
comment on column public.agent_sessions.channel is 'Channel of the first turn (app, whatsapp, web, ussd, sms, ...).';
comment on column public.agent_sessions.expires_at is
  'After this instant the history reads as empty; refreshed to now + AI_AGENT_SESSION_TTL_SECONDS on every turn.';
create index agent_sessions_user_id_idx on public.agent_sessions (user_id);
create index agent_sessions_org_created_idx on public.agent_sessions (org_id, created_at);
create index agent_sessions_expires_at_idx on public.agent_sessions (expires_at);

create table public.agent_session_messages (
  id bigint generated always as identity primary key,
  session_id uuid not null references public.agent_sessions (id) on delete cascade,
  role text not null check (role in ('user', 'assistant')),
  content text not null,
  created_at timestamptz not null default now()
);
comment on table public.agent_session_messages is
  'Messages of public.agent_sessions, oldest first by id. Trimmed to AI_AGENT_SESSION_MAX_MESSAGES on every turn.';
create index agent_session_messages_session_idx on public.agent_session_messages (session_id, id);

alter table public.agent_sessions enable row level security;
alter table public.agent_session_messages enable row level security;
create policy agent_sessions_select_own on public.agent_sessions
  for select to authenticated using (user_id = (select auth.uid()));
create policy agent_session_messages_select_own on public.agent_session_messages
  for select to authenticated using (
    exists (
      select 1 from public.agent_sessions s
      where s.id = agent_session_messages.session_id and s.user_id = (select auth.uid())
    )
  );
revoke all on public.agent_sessions, public.agent_session_messages from anon, authenticated;
grant select on public.agent_sessions, public.agent_session_messages to authenticated;

-- ---------------------------------------------------------------------------
-- Opt-outs
-- ---------------------------------------------------------------------------
create table public.agent_opt_outs (
  id uuid primary key default gen_random_uuid(),
  org_id uuid not null,
  user_id uuid,
  channel text,
  reason text,
  created_by text,
  created_at timestamptz not null default now(),
  expires_at timestamptz,
  expired_by text
);
comment on table public.agent_opt_outs is
  'Opt-out registry. A row is active while expires_at is null or in the future. Rows are expired, never deleted, so the audit trail stays.';
comment on column public.agent_opt_outs.user_id is 'NULL = the whole organization.';
comment on column public.agent_opt_outs.channel is 'NULL = every channel; otherwise only requests on this channel are refused.';
comment on column public.agent_opt_outs.expires_at is 'NULL = until expired by an operator (ops.expire_opt_out).';
comment on column public.agent_opt_outs.expired_by is 'Who expired the opt-out through ops.expire_opt_out.';
create index agent_opt_outs_lookup_idx on public.agent_opt_outs (org_id, user_id, channel);
create index agent_opt_outs_user_id_idx on public.agent_opt_outs (user_id);
alter table public.agent_opt_outs enable row level security;
revoke all on public.agent_opt_outs from anon, authenticated;

-- ---------------------------------------------------------------------------
-- Usage log: one row per request, every outcome. No foreign keys and no
-- checks beyond success being known, so the insert cannot fail because the
-- session lives in Redis or was never saved.
-- ---------------------------------------------------------------------------
create table public.agent_usage_events (
  id bigint generated always as identity primary key,
  request_id text,
  org_id uuid,
  user_id uuid,
  session_id uuid,
  channel text,
  model text,
  prompt_tokens integer,
  cached_prompt_tokens integer,
  completion_tokens integer,
  total_tokens integer,
  latency_ms integer,
  success boolean not null,
  error_code text,
  error_message text,
  metadata jsonb not null default '{}'::jsonb,
  created_at timestamptz not null default now()
);
comment on table public.agent_usage_events is
  'One row per agent-chat request, whatever its outcome. Feeds the cost and health views in schema ops.';
comment on column public.agent_usage_events.success is 'true when the assistant answered and the turn was stored.';
comment on column public.agent_usage_events.error_code is
  'The client-facing error code (rate_limit, opt_out, openai_error, session_store_error, invalid_request, unauthorized, forbidden, session_not_found, internal_error); NULL on success.';
comment on column public.agent_usage_events.error_message is 'Operator-only detail (upstream status, driver error). Never sent to the client.';
comment on column public.agent_usage_events.cached_prompt_tokens is 'Prompt tokens OpenAI served from its prompt cache (billed at the cached-input price).';
comment on column public.agent_usage_events.latency_ms is 'Time from request arrival to the last byte of the answer, in milliseconds.';
comment on column public.agent_usage_events.metadata is 'Rate-limit bucket keys, the client IP, the session store, the auth mode, streaming.';
create index agent_usage_events_org_created_idx on public.agent_usage_events (org_id, created_at);
create index agent_usage_events_created_idx on public.agent_usage_events (created_at);
create index agent_usage_events_user_id_idx on public.agent_usage_events (user_id);
alter table public.agent_usage_events enable row level security;
revoke all on public.agent_usage_events from anon, authenticated;

-- ---------------------------------------------------------------------------
-- Rate-limit buckets.
--
-- Algorithm: sliding window over sub-windows ("slots"). A bucket's window of
-- W seconds is cut into 20 slots of W/20 each; the row keeps, per recent
-- slot, how many requests it admitted. A request is admitted when the
-- admissions counted in every slot that overlaps (now - W, now] are fewer
-- than the limit N.
--
-- Guarantee: never more than N admissions in any W-second interval, under
-- any concurrency (the rows are locked in one global order for the decision).
-- The price of the bounded row size: a request can be refused up to one
-- slot (W/20) earlier than an exact sliding log would refuse it.
-- All-or-nothing: the org:, user: and ip: buckets are decided together and
-- a refused request consumes none of them.
-- ---------------------------------------------------------------------------
create table ops.rate_limits (
  bucket_key text primary key,
  scope text generated always as (split_part(bucket_key, ':', 1)) stored,
  max_requests integer not null check (max_requests > 0),
  window_seconds integer not null check (window_seconds > 0),
  slot_ms bigint not null check (slot_ms > 0),
  slot_ids bigint[] not null default '{}',
  slot_counts integer[] not null default '{}',
  slot_total integer not null default 0,
  updated_at timestamptz not null default now()
);
comment on table ops.rate_limits is
  'One row per rate-limit bucket (org:<uuid>, user:<uuid>, ip:<address>). Read ops.rate_limit_status for used/remaining/reset; clear with ops.clear_rate_limit(key).';
comment on column ops.rate_limits.max_requests is 'Limit N applied at the last decision (AI_AGENT_RATE_LIMIT_<SCOPE>_MAX_REQUESTS).';
comment on column ops.rate_limits.window_seconds is 'Window W applied at the last decision (AI_AGENT_RATE_LIMIT_WINDOW_SECONDS).';
comment on column ops.rate_limits.slot_ms is 'Width of one slot, W/20 in milliseconds.';
comment on column ops.rate_limits.slot_ids is 'Slot numbers (floor(epoch_ms / slot_ms)) that still hold admissions, ascending.';
comment on column ops.rate_limits.slot_counts is 'Admissions per slot, parallel to slot_ids.';
comment on column ops.rate_limits.slot_total is
  'Sum of slot_counts, kept so a decision only subtracts the slots that left the window instead of re-adding all of them.';
create index rate_limits_updated_at_idx on ops.rate_limits (updated_at);
alter table ops.rate_limits enable row level security;
revoke all on ops.rate_limits from public, anon, authenticated;
grant select on ops.rate_limits to service_role;

-- ---------------------------------------------------------------------------
-- Rate-limit internals
-- ---------------------------------------------------------------------------
create type ops.rate_limit_state as (
  bucket_key text,
  max_requests integer,
  allowed boolean,
  used integer,
  slot_ms bigint,
  slot_ids bigint[],
  slot_counts integer[],
  reset_ms bigint,
  retry_after_ms bigint,
  updated_at timestamptz
);
comment on type ops.rate_limit_state is 'One bucket evaluated at one instant, before it is counted.';

-- Locks and evaluates one bucket at p_now without counting the request.
create function ops.rate_limit_peek(
  p_bucket_key text,
  p_limit integer,
  p_window_seconds integer,
  p_now timestamptz
)
returns ops.rate_limit_state
language plpgsql
set search_path = ''
as $$
declare
  v_now_ms bigint := (extract(epoch from p_now) * 1000)::bigint;
  v_window_ms bigint := p_window_seconds::bigint * 1000;
  -- W/20 in milliseconds (exact: W is whole seconds).
  v_slot_ms bigint := p_window_seconds::bigint * 50;
  v_row ops.rate_limits%rowtype;
  v_min_slot bigint;
  v_state ops.rate_limit_state;
  v_ids bigint[] := '{}';
  v_counts integer[] := '{}';
  v_used integer := 0;
  v_freed integer := 0;
  v_n integer;
  v_first integer;
  i integer;
begin
  select r.* into v_row from ops.rate_limits r where r.bucket_key = p_bucket_key for update;
  if not found then
    insert into ops.rate_limits (bucket_key, max_requests, window_seconds, slot_ms)
    values (p_bucket_key, p_limit, p_window_seconds, v_slot_ms)
    on conflict (bucket_key) do nothing;
    select r.* into v_row from ops.rate_limits r where r.bucket_key = p_bucket_key for update;
  end if;

  v_min_slot := (v_now_ms - v_window_ms) / v_slot_ms;
  v_n := coalesce(array_length(v_row.slot_ids, 1), 0);
  if v_row.slot_ms = v_slot_ms then
    -- Slots are ascending: drop the ones that left the window from the front.
    v_used := v_row.slot_total;
    v_first := 1;
    while v_first <= v_n and v_row.slot_ids[v_first] < v_min_slot loop
      v_used := v_used - v_row.slot_counts[v_first];
      v_first := v_first + 1;
    end loop;
    if v_first = 1 then
      v_ids := v_row.slot_ids;
      v_counts := v_row.slot_counts;
    elsif v_first <= v_n then
      v_ids := v_row.slot_ids[v_first:v_n];
      v_counts := v_row.slot_counts[v_first:v_n];
    end if;
  else
    -- The window changed: every admission that may still sit in the old
    -- window is counted in the current slot (over-counting, never under).
    for i in 1 .. v_n loop
      if (v_row.slot_ids[i] + 1) * v_row.slot_ms > v_now_ms - v_row.window_seconds::bigint * 1000 then
        v_used := v_used + v_row.slot_counts[i];
      end if;
    end loop;
    if v_used > 0 then
      v_ids := array[v_now_ms / v_slot_ms];
      v_counts := array[v_used];
    end if;
  end if;

  v_state.bucket_key := p_bucket_key;
  v_state.max_requests := p_limit;
  v_state.updated_at := v_row.updated_at;
  v_state.used := v_used;
  v_state.slot_ms := v_slot_ms;
  v_state.slot_ids := v_ids;
  v_state.slot_counts := v_counts;
  v_state.allowed := v_used < p_limit;
  v_state.retry_after_ms := 0;
  if v_state.allowed then
    -- Room grows again when the oldest counted slot (or the one this
    -- request lands in) leaves the window.
    v_state.reset_ms := (coalesce(v_ids[1], v_now_ms / v_slot_ms) + 1) * v_slot_ms
      + v_window_ms - v_now_ms;
  else
    -- Walk the slots oldest first until enough admissions have left.
    for i in 1 .. coalesce(array_length(v_ids, 1), 0) loop
      v_freed := v_freed + v_counts[i];
      if v_used - v_freed < p_limit then
        v_state.retry_after_ms := (v_ids[i] + 1) * v_slot_ms + v_window_ms - v_now_ms;
        exit;
      end if;
    end loop;
    v_state.reset_ms := v_state.retry_after_ms;
  end if;
  v_state.reset_ms := greatest(v_state.reset_ms, 1);
  v_state.retry_after_ms := greatest(v_state.retry_after_ms, 0);
  return v_state;
end;
$$;
comment on function ops.rate_limit_peek(text, integer, integer, timestamptz) is
  'Locks and evaluates one rate-limit bucket at p_now without counting the request. Internal to ops.consume_rate_limits.';

create function ops.consume_rate_limits(
  p_bucket_keys text[],
  p_limits integer[],
  p_window_seconds integer,
  p_now timestamptz default now()
)
returns jsonb
language plpgsql
set search_path = ''
as $$
declare
  v_now_ms bigint := (extract(epoch from p_now) * 1000)::bigint;
  v_counted ops.rate_limit_state[] := '{}';
  v_state ops.rate_limit_state;
  v_refused ops.rate_limit_state;
  v_key text;
  v_limit integer;
  v_slot bigint;
  v_n integer;
  v_bucket jsonb;
  v_buckets jsonb := '[]'::jsonb;
  v_tightest jsonb;
  i integer;
begin
  if p_window_seconds is null or p_window_seconds < 1 then
    raise exception 'window_seconds must be a positive integer' using errcode = '22023';
  end if;
  if coalesce(array_length(p_bucket_keys, 1), 0) <> coalesce(array_length(p_limits, 1), 0) then
    raise exception 'one limit per bucket key' using errcode = '22023';
  end if;

  -- Buckets are locked one by one in a single global order (user:, ip:,
  -- org: last), so concurrent callers never deadlock. Each bucket is
  -- counted as soon as it allows, before the next is locked: the org row,
  -- which every member of a busy org queues on, is then held only for its
  -- own update and the commit. If a later bucket refuses, the earlier ones
  -- are put back exactly as they were, so a refused request consumes nothing.
  for v_key, v_limit in
    select t.key, t.lim from unnest(p_bucket_keys, p_limits) as t(key, lim)
    where t.key is not null
    order by case split_part(t.key, ':', 1) when 'user' then 1 when 'ip' then 2 when 'org' then 3 else 0 end,
             t.key collate "C"
  loop
    if v_limit is null or v_limit < 1 then
      raise exception 'limit of % must be a positive integer', v_key using errcode = '22023';
    end if;
    v_state := ops.rate_limit_peek(v_key, v_limit, p_window_seconds, p_now);
    if not v_state.allowed then
      v_refused := v_state;
      exit;
    end if;
    v_counted := v_counted || v_state;
    v_slot := v_now_ms / v_state.slot_ms;
    v_n := coalesce(array_length(v_state.slot_ids, 1), 0);
    if v_n > 0 and v_state.slot_ids[v_n] = v_slot then
      v_state.slot_counts[v_n] := v_state.slot_counts[v_n] + 1;
    else
      v_state.slot_ids := v_state.slot_ids || v_slot;
      v_state.slot_counts := v_state.slot_counts || 1;
    end if;
    update ops.rate_limits r
    set max_requests = v_limit,
        window_seconds = p_window_seconds,
        slot_ms = v_state.slot_ms,
        slot_ids = v_state.slot_ids,
        slot_counts = v_state.slot_counts,
        slot_total = v_state.used + 1,
        updated_at = p_now
    where r.bucket_key = v_key;
    v_bucket := jsonb_build_object(
      'key', v_key,
      'scope', split_part(v_key, ':', 1),
      'limit', v_limit,
      'remaining', greatest(v_limit - v_state.used - 1, 0),
      'reset_seconds', ceil(v_state.reset_ms / 1000.0)::integer
    );
    v_buckets := v_buckets || v_bucket;
    -- The bucket with the least headroom is the one clients should watch.
    if v_tightest is null or (v_bucket ->> 'remaining')::integer < (v_tightest ->> 'remaining')::integer then
      v_tightest := v_bucket;
    end if;
  end loop;

  if v_refused.bucket_key is null then
    return jsonb_build_object(
      'allowed', true,
      'scope', v_tightest ->> 'scope',
      'key', v_tightest ->> 'key',
      'limit', (v_tightest ->> 'limit')::integer,
      'remaining', (v_tightest ->> 'remaining')::integer,
      'reset_seconds', (v_tightest ->> 'reset_seconds')::integer,
      'retry_after_seconds', 0,
      'buckets', v_buckets
    );
  end if;

  -- Refused: restore the buckets counted before the refusing one.
  for i in 1 .. coalesce(array_length(v_counted, 1), 0) loop
    v_state := v_counted[i];
    update ops.rate_limits r
    set slot_ids = v_state.slot_ids,
        slot_counts = v_state.slot_counts,
        slot_total = v_state.used,
        updated_at = v_state.updated_at
    where r.bucket_key = v_state.bucket_key;
  end loop;
  return jsonb_build_object(
    'allowed', false,
    'scope', split_part(v_refused.bucket_key, ':', 1),
    'key', v_refused.bucket_key,
    'limit', v_refused.max_requests,
    'remaining', 0,
    'reset_seconds', greatest(ceil(v_refused.retry_after_ms / 1000.0)::integer, 1),
    'retry_after_seconds', greatest(ceil(v_refused.retry_after_ms / 1000.0)::integer, 1)
  );
end;
$$;
comment on function ops.consume_rate_limits(text[], integer[], integer, timestamptz) is
  'All-or-nothing sliding-window decision over several buckets: admits only if every bucket has room, then counts the request in each. Never more than N admissions in any W seconds per bucket.';

revoke execute on function ops.rate_limit_peek(text, integer, integer, timestamptz) from public, anon, authenticated;
revoke execute on function ops.consume_rate_limits(text[], integer[], integer, timestamptz) from public, anon, authenticated;
grant execute on function ops.rate_limit_peek(text, integer, integer, timestamptz) to service_role;
grant execute on function ops.consume_rate_limits(text[], integer[], integer, timestamptz) to service_role;
grant select, insert, update, delete on ops.rate_limits to service_role;

-- ---------------------------------------------------------------------------
-- public.agent_begin_turn: the one database round trip before the model.
-- ---------------------------------------------------------------------------
create function public.agent_begin_turn(
  p_org_id uuid,
  p_user_id uuid,
  p_client_ip text default null,
  p_channel text default 'app',
  p_session_id uuid default null,
  p_org_limit integer default 60,
  p_user_limit integer default 60,
  p_ip_limit integer default 60,
  p_window_seconds integer default 60,
  p_max_messages integer default 20,
  p_load_history boolean default true,
  p_now timestamptz default now()
)
returns jsonb
language plpgsql
set search_path = ''
as $$
declare
  v_opt_out public.agent_opt_outs%rowtype;
  v_session public.agent_sessions%rowtype;
  v_decision jsonb;
  v_history jsonb := '[]'::jsonb;
begin
  if p_org_id is null or p_user_id is null then
    raise exception 'org_id and user_id are required' using errcode = '22023';
  end if;
  if p_max_messages is null or p_max_messages < 0 then
    raise exception 'max_messages must be zero or more' using errcode = '22023';
  end if;
  -- This transaction only writes rate-limit counters. Not waiting for the
  -- WAL flush at commit shortens how long the hot org row stays locked; a
  -- server crash can forget at most the last few hundred milliseconds of
  -- counts, which is an acceptable price for counters.
  perform set_config('synchronous_commit', 'off', true);

  -- 1. Opt-outs: org-wide or this member; all channels or this one.
  select o.* into v_opt_out
  from public.agent_opt_outs o
  where o.org_id = p_org_id
    and (o.user_id is null or o.user_id = p_user_id)
    and (o.channel is null or o.channel = p_channel)
    and (o.expires_at is null or o.expires_at > p_now)
  order by o.user_id nulls first, o.channel nulls first
  limit 1;
  if found then
    return jsonb_build_object(
      'outcome', 'opt_out',
      'opt_out_scope', case when v_opt_out.user_id is null then 'org' else 'user' end,
      'opt_out_channel', v_opt_out.channel
    );
  end if;

  -- 2. Membership.
  if not exists (
    select 1 from public.org_memberships m where m.org_id = p_org_id and m.user_id = p_user_id
  ) then
    return jsonb_build_object('outcome', 'forbidden');
  end if;

  -- 3. Session ownership: an id belongs to its first (org, user) for good.
  if p_session_id is not null then
    select s.* into v_session from public.agent_sessions s where s.id = p_session_id;
    if found and (v_session.org_id <> p_org_id or v_session.user_id <> p_user_id) then
      return jsonb_build_object('outcome', 'session_not_found');
    end if;
  end if;

  -- 4. History (read before the rate-limit locks, so they are held briefly), newest p_max_messages, oldest first; expired reads as empty.
  if p_load_history and v_session.id is not null and v_session.expires_at > p_now and p_max_messages > 0 then
    select coalesce(jsonb_agg(jsonb_build_object('role', h.role, 'content', h.content) order by h.id), '[]'::jsonb)
    into v_history
    from (
      select m.id, m.role, m.content
      from public.agent_session_messages m
      where m.session_id = v_session.id
      order by m.id desc
      limit p_max_messages
    ) h;
  end if;

  -- 5. Rate limits, last, all-or-nothing; the ip: bucket only when the IP is known.
  v_decision := ops.consume_rate_limits(
    array['org:' || p_org_id, 'user:' || p_user_id, 'ip:' || nullif(p_client_ip, '')],
    array[p_org_limit, p_user_limit, p_ip_limit],
    p_window_seconds,
    p_now
  );
  if not (v_decision ->> 'allowed')::boolean then
    return jsonb_build_object('outcome', 'rate_limit', 'rate_limit', v_decision);
  end if;

  return jsonb_build_object(
    'outcome', 'ok',
    'rate_limit', v_decision,
    'session_exists', v_session.id is not null and v_session.expires_at > p_now,
    'history', v_history
  );
end;
$$;
comment on function public.agent_begin_turn(uuid, uuid, text, text, uuid, integer, integer, integer, integer, integer, boolean, timestamptz) is
  'agent-chat, before the model: opt-out check, membership check, session ownership, all-or-nothing rate limit over org:/user:/ip:, and (Supabase store) the session history. Returns {outcome: ok|opt_out|forbidden|session_not_found|rate_limit, rate_limit, history}. service_role only.';

-- ---------------------------------------------------------------------------
-- public.agent_end_turn: store one answered turn.
-- ---------------------------------------------------------------------------
create function public.agent_end_turn(
  p_session_id uuid,
  p_org_id uuid,
  p_user_id uuid,
  p_channel text,
  p_user_message text,
  p_assistant_message text,
  p_ttl_seconds integer default 86400,
  p_max_messages integer default 20,
  p_now timestamptz default now()
)
returns jsonb
language plpgsql
set search_path = ''
as $$
declare
  v_session public.agent_sessions%rowtype;
  v_cutoff bigint;
begin
  if p_session_id is null or p_org_id is null or p_user_id is null then
    raise exception 'session_id, org_id and user_id are required' using errcode = '22023';
  end if;
  if p_ttl_seconds is null or p_ttl_seconds < 1 then
    raise exception 'ttl_seconds must be a positive integer' using errcode = '22023';
  end if;
  if p_max_messages is null or p_max_messages < 0 then
    raise exception 'max_messages must be zero or more' using errcode = '22023';
  end if;

  insert into public.agent_sessions (id, org_id, user_id, channel, created_at, updated_at, expires_at)
  values (p_session_id, p_org_id, p_user_id, coalesce(p_channel, 'app'), p_now, p_now,
          p_now + make_interval(secs => p_ttl_seconds))
  on conflict (id) do nothing;

  -- Lock the session row; concurrent turns on one session queue here.
  select s.* into v_session from public.agent_sessions s where s.id = p_session_id for update;
  if v_session.org_id <> p_org_id or v_session.user_id <> p_user_id then
    return jsonb_build_object('outcome', 'session_not_found');
  end if;

  -- A session revived after expiry starts empty, as it read.
  if v_session.expires_at <= p_now then
    delete from public.agent_session_messages m where m.session_id = p_session_id;
  end if;

  update public.agent_sessions s
  set updated_at = p_now,
      expires_at = p_now + make_interval(secs => p_ttl_seconds)
  where s.id = p_session_id;

  insert into public.agent_session_messages (session_id, role, content, created_at)
  values (p_session_id, 'user', p_user_message, p_now),
         (p_session_id, 'assistant', p_assistant_message, p_now);

  -- Keep the newest p_max_messages.
  select m.id into v_cutoff
  from public.agent_session_messages m
  where m.session_id = p_session_id
  order by m.id desc
  offset p_max_messages
  limit 1;
  if v_cutoff is not null then
    delete from public.agent_session_messages m
    where m.session_id = p_session_id and m.id <= v_cutoff;
  end if;

  return jsonb_build_object('outcome', 'ok', 'session_id', p_session_id,
                            'expires_at', p_now + make_interval(secs => p_ttl_seconds));
end;
$$;
comment on function public.agent_end_turn(uuid, uuid, uuid, text, text, text, integer, integer, timestamptz) is
  'agent-chat, after the model: appends the user message and the reply, trims to p_max_messages, refreshes expires_at. Creates the session on its first turn; another owner gets {outcome: session_not_found}. service_role only.';

-- ---------------------------------------------------------------------------
-- public.agent_log_usage: the single insert per request.
-- ---------------------------------------------------------------------------
create function public.agent_log_usage(p_event jsonb)
returns void
language sql
set search_path = ''
as $$
  insert into public.agent_usage_events (
    request_id, org_id, user_id, session_id, channel, model,
    prompt_tokens, cached_prompt_tokens, completion_tokens, total_tokens,
    latency_ms, success, error_code, error_message, metadata, created_at
  )
  select
    left(e.request_id, 128), e.org_id, e.user_id, e.session_id, left(e.channel, 64), left(e.model, 128),
    e.prompt_tokens, e.cached_prompt_tokens, e.completion_tokens, e.total_tokens,
    e.latency_ms, coalesce(e.success, false), left(e.error_code, 64), left(e.error_message, 2000),
    coalesce(e.metadata, '{}'::jsonb), coalesce(e.created_at, now())
  from jsonb_to_record(p_event) as e (
    request_id text, org_id uuid, user_id uuid, session_id uuid, channel text, model text,
    prompt_tokens integer, cached_prompt_tokens integer, completion_tokens integer, total_tokens integer,
    latency_ms integer, success boolean, error_code text, error_message text, metadata jsonb,
    created_at timestamptz
  );
$$;
comment on function public.agent_log_usage(jsonb) is
  'agent-chat: inserts one row into public.agent_usage_events from a JSON object with the table''s column names. service_role only.';

revoke execute on function public.agent_begin_turn(uuid, uuid, text, text, uuid, integer, integer, integer, integer, integer, boolean, timestamptz) from public, anon, authenticated;
revoke execute on function public.agent_end_turn(uuid, uuid, uuid, text, text, text, integer, integer, timestamptz) from public, anon, authenticated;
revoke execute on function public.agent_log_usage(jsonb) from public, anon, authenticated;
grant execute on function public.agent_begin_turn(uuid, uuid, text, text, uuid, integer, integer, integer, integer, integer, boolean, timestamptz) to service_role;
grant execute on function public.agent_end_turn(uuid, uuid, uuid, text, text, text, integer, integer, timestamptz) to service_role;
grant execute on function public.agent_log_usage(jsonb) to service_role;
grant select, insert, update, delete on public.agent_sessions, public.agent_session_messages,
  public.agent_opt_outs, public.agent_usage_events to service_role;
grant select on public.org_memberships to service_role;
