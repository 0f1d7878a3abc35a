-- agent-chat: a turn in the database. One call before the model
-- (agent_begin_turn) and, with the Supabase session store, one after it
-- (agent_finish_turn, which is agent_end_turn plus the usage row of
-- agent_log_usage, defined with the usage log in a later migration).
-- Only service_role may execute them.

-- ---------------------------------------------------------------------------
-- public.agent_begin_turn: the one database round trip before the model.
--
-- Order: membership, opt-outs, session ownership, rate limits. Membership
-- comes first so a non-member learns nothing about the org (not even that
-- it opted out).
--
-- Refusals are limited too: a forbidden, opt_out or session_not_found
-- outcome consumes one slot of the caller's user: bucket (and only that
-- bucket: the org and the IP pay nothing for a refusal). So a signed-in user
-- gets at most the user limit of refusals per window, whatever they send;
-- past it the answer is rate_limit, which the function counts instead of
-- logging one row each. A refusal returns the same rate_limit object as an
-- admission (limit, remaining, reset), for the RateLimit headers.
--
-- Every outcome says whether the user is a member of the org (member), so
-- the function names the org on the usage row only for members: an
-- outsider's 403 or 429 never lands in another tenant's reports.
--
-- Session ownership: with the Supabase store the session row is read here;
-- the Redis store knows ownership before this call and passes it as
-- p_session_owned (false = someone else's), so both stores refuse in the
-- same order and charge the same.
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
  p_session_owned boolean default null,
  p_now timestamptz default now(),
  p_idempotency_key text default null,
  p_request_hash text default null,
  p_request_id text default null
)
returns jsonb
language plpgsql
set search_path = ''
as $$
declare
  v_idempotency jsonb;
  v_opt_out public.agent_opt_outs%rowtype;
  v_session public.agent_sessions%rowtype;
  v_refusal jsonb;
  v_decision jsonb;
  v_history jsonb := '[]'::jsonb;
begin
  if p_org_id is null or p_user_id is null then
    raise exception 'org_id and user_id are required' using errcode = '22023';
  end if;
  if p_max_messages is null or p_max_messages < 0 then
    raise exception 'max_messages must be zero or more' using errcode = '22023';
  end if;
  -- 0. Idempotency-Key, before any check or bucket: a replay, a different body
  -- or a duplicate still running ends here (20251231120600_ai_agent_idempotency).
  if p_idempotency_key is not null then
    v_idempotency := ops.idempotency_check(p_user_id, p_idempotency_key, p_request_hash, p_now);
    if v_idempotency is not null then return v_idempotency; end if;
  end if;
  -- This transaction only writes rate-limit counters. Not waiting for the
  -- WAL flush at commit shortens how long the hot org row stays locked; a
  -- server crash can forget at most the last few hundred milliseconds of
  -- counts, which is an acceptable price for counters.
  perform set_config('synchronous_commit', 'off', true);

  -- 1. Membership.
  if not exists (
    select 1 from public.org_memberships m where m.org_id = p_org_id and m.user_id = p_user_id
  ) then
    v_refusal := jsonb_build_object('outcome', 'forbidden', 'member', false);
  else
    -- 2. Opt-outs: org-wide or this member; all channels or this one.
    select o.* into v_opt_out
    from public.agent_opt_outs o
    where o.org_id = p_org_id
      and (o.user_id is null or o.user_id = p_user_id)
      and (o.channel is null or o.channel = p_channel)
      and (o.expires_at is null or o.expires_at > p_now)
    order by o.user_id nulls first, o.channel nulls first
    limit 1;
    if found then
      v_refusal := jsonb_build_object(
        'outcome', 'opt_out',
        'member', true,
        'opt_out_scope', case when v_opt_out.user_id is null then 'org' else 'user' end,
        'opt_out_channel', v_opt_out.channel
      );
    -- 3. Session ownership: an id belongs to its first (org, user) for good.
    elsif p_session_owned is false then
      v_refusal := jsonb_build_object('outcome', 'session_not_found', 'member', true);
    elsif p_session_id is not null then
      select s.* into v_session from public.agent_sessions s where s.id = p_session_id;
      if found and (v_session.org_id <> p_org_id or v_session.user_id <> p_user_id) then
        v_refusal := jsonb_build_object('outcome', 'session_not_found', 'member', true);
      end if;
    end if;
  end if;

  -- A refusal costs one slot of the user: bucket; past the limit it is rate_limit.
  if v_refusal is not null then
    v_decision := ops.consume_rate_limits(
      array['user:' || p_user_id], array[p_user_limit], p_window_seconds, p_now);
    if not (v_decision ->> 'allowed')::boolean then
      return jsonb_build_object('outcome', 'rate_limit', 'member', v_refusal -> 'member',
                                'rate_limit', v_decision);
    end if;
    return v_refusal || jsonb_build_object('rate_limit', v_decision);
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
    return jsonb_build_object('outcome', 'rate_limit', 'member', true, 'rate_limit', v_decision);
  end if;

  -- Admitted: the Idempotency-Key is this attempt's until it settles.
  if p_idempotency_key is not null then
    perform ops.idempotency_claim(p_user_id, p_idempotency_key, p_request_hash, p_org_id, p_request_id, p_now);
  end if;
  return jsonb_build_object(
    'outcome', 'ok',
    'member', true,
    'rate_limit', v_decision,
    'session_exists', v_session.id is not null and v_session.expires_at > p_now,
    'history', v_history
  );
end;
$$;
comment on function public.agent_begin_turn(uuid, uuid, text, text, uuid, integer, integer, integer, integer, integer, boolean, boolean, timestamptz, text, text, text) is
  'agent-chat, before the model: membership, opt-outs, session ownership (p_session_owned from the Redis store, or the session row), all-or-nothing rate limit over org:/user:/ip:, and (Supabase store) the session history. A refusal (forbidden, opt_out, session_not_found) consumes one user: slot and is rate_limit past the user limit. With an Idempotency-Key (p_idempotency_key, checked before anything else): replay, idempotency_mismatch or request_in_progress. Returns {outcome: ok|opt_out|forbidden|session_not_found|rate_limit|replay|idempotency_mismatch|request_in_progress, member, rate_limit, history}. service_role only.';

revoke execute on function public.agent_begin_turn(uuid, uuid, text, text, uuid, integer, integer, integer, integer, integer, boolean, boolean, timestamptz, text, text, text) from public, anon, authenticated;
grant execute on function public.agent_begin_turn(uuid, uuid, text, text, uuid, integer, integer, integer, integer, integer, boolean, boolean, timestamptz, text, text, text) to service_role;

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

  -- Keep the newest p_max_messages. At most 64 older rows go per turn, so a
  -- turn costs the same however much history a session holds (after the cap
  -- is lowered, say); the rest goes on later turns, or all at once when the
  -- session has expired (ops.purge_expired).
  -- Readers never see the excess: they read the newest p_max_messages.
  select m.id into v_cutoff
  from public.agent_session_messages m
  where m.session_id = p_session_id
  order by m.id desc
  offset p_max_messages
  limit 1;
  if v_cutoff is not null then
    delete from public.agent_session_messages m
    where m.id in (
      select o.id from public.agent_session_messages o
      where o.session_id = p_session_id and o.id <= v_cutoff
      order by o.id
      limit 64
    );
  end if;

  return jsonb_build_object('outcome', 'ok', 'session_id', p_session_id,
                            'expires_at', p_now + make_interval(secs => p_ttl_seconds));
end;
$$;
comment on function public.agent_end_turn(uuid, uuid, uuid, text, text, text, integer, integer, timestamptz) is
  'agent-chat, after the model: appends the user message and the reply, trims to p_max_messages, refreshes expires_at. Creates the session on its first turn; another owner gets {outcome: session_not_found}. service_role only.';
revoke execute on function public.agent_end_turn(uuid, uuid, uuid, text, text, text, integer, integer, timestamptz) from public, anon, authenticated;
grant execute on function public.agent_end_turn(uuid, uuid, uuid, text, text, text, integer, integer, timestamptz) to service_role;

-- ---------------------------------------------------------------------------
-- public.agent_finish_turn: an answered turn and its usage row in one round
-- trip (Supabase store): one call and one commit instead of two. The usage
-- row is still the single insert of agent_log_usage.
-- ---------------------------------------------------------------------------
create function public.agent_finish_turn(
  p_session_id uuid,
  p_org_id uuid,
  p_user_id uuid,
  p_channel text,
  p_user_message text,
  p_assistant_message text,
  p_ttl_seconds integer,
  p_max_messages integer,
  p_usage jsonb
)
returns jsonb
language plpgsql
set search_path = ''
as $$
declare
  v_result jsonb;
  v_logged boolean := false;
begin
  v_result := public.agent_end_turn(
    p_session_id, p_org_id, p_user_id, p_channel, p_user_message, p_assistant_message,
    p_ttl_seconds, p_max_messages);
  -- Another owner's session: the caller logs that outcome itself.
  if v_result ->> 'outcome' = 'ok' and p_usage is not null then
    -- A failing usage insert must not undo the saved turn: it runs in its
    -- own subtransaction and the caller retries it on its own path.
    begin
      perform public.agent_log_usage(p_usage);
      v_logged := true;
    exception when others then
      v_logged := false;
    end;
  end if;
  return v_result || jsonb_build_object('usage_logged', v_logged);
end;
$$;
comment on function public.agent_finish_turn(uuid, uuid, uuid, text, text, text, integer, integer, jsonb) is
  'agent-chat, Supabase store: agent_end_turn, then (when the turn was saved) agent_log_usage(p_usage), in one transaction. Returns the end-turn result plus usage_logged. service_role only.';
revoke execute on function public.agent_finish_turn(uuid, uuid, uuid, text, text, text, integer, integer, jsonb) from public, anon, authenticated;
grant execute on function public.agent_finish_turn(uuid, uuid, uuid, text, text, text, integer, integer, jsonb) to service_role;
