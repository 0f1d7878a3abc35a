-- agent-chat: a turn in the database. One call before the model
-- (agent_begin_turn) and, with the Supabase session store, one after it
-- (agent_finish_turn, which is agent_end_turn plus the usage row of
-- agent_log_usage, defined with the usage log in a later migration).
-- Only service_role may execute them.

-- ---------------------------------------------------------------------------
-- public.agent_begin_turn: the one database round trip before the model.
--
-- Order: membership, switches, opt-outs, session ownership, then the
-- admission decision (token quotas, enforced budgets, request buckets).
-- Membership comes first so a non-member learns nothing about the org (not
-- its switch, not its opt-out).
--
-- Refusals are limited too: a forbidden, opt_out or session_not_found
-- outcome consumes one slot of the caller's user: bucket (and only that
-- bucket: the org and the IP pay nothing for a refusal). So a signed-in user
-- gets at most the user limit of refusals per window, whatever they send;
-- past it the answer is rate_limit, which the function counts instead of
-- logging one row each. A refusal returns the same rate_limit object as an
-- admission (limit, remaining, reset), for the RateLimit headers. Refusals
-- that are the operator's doing (assistant_disabled, budget_exceeded, a
-- token quota) cost nothing.
--
-- Every outcome says whether the user is a member of the org (member), so
-- the function names the org on the usage row only for members: an
-- outsider's 403 or 429 never lands in another tenant's reports.
--
-- Session ownership: with the Supabase store the session row is read here;
-- the Redis store knows ownership before this call and passes it as
-- p_session_owned (false = someone else's), so both stores refuse in the
-- same order and charge the same.
--
-- Policies (ops.agent_policies) are read in the same call: the tenant row,
-- else the global row, else the p_*_limit / p_window_seconds arguments (the
-- environment). A channel row adds a channel: bucket.
--
-- Token quotas and enforced budgets: the turn reserves its worst case
-- (p_reserve_tokens, the function's prompt estimate plus its max output
-- tokens, plus an estimate of the history read here) in
-- ops.token_reservations, priced at the model's highest per-token price.
-- The decision is serialised per org (and per user for user quotas, and
-- globally for an enforced global budget) with transaction-scoped advisory
-- locks, taken before any row lock and always in that order, so concurrent
-- turns see each other's reservations: a quota is never exceeded by
-- reservations, and a budget is overshot by at most one turn's worst case
-- (a turn is refused once spend plus open reservations reach the budget).
-- The usage row of the request settles the reservation (trigger in the
-- usage migration); an abandoned one stops counting at its expires_at.
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
  p_request_id text default null,
  p_reserve_tokens integer default 0,
  p_model text default null,
  p_reserve_seconds integer default 300,
  p_now timestamptz default now(),
  p_idempotency_key text default null,
  p_request_hash text default null
)
returns jsonb
language plpgsql
set search_path = ''
as $$
declare
  v_idempotency jsonb;
  v_zero constant uuid := '00000000-0000-0000-0000-000000000000';
  v_global ops.agent_policies%rowtype;
  v_global_channel ops.agent_policies%rowtype;
  v_org ops.agent_policies%rowtype;
  v_org_channel ops.agent_policies%rowtype;
  v_policy ops.agent_policies%rowtype;
  v_opt_out public.agent_opt_outs%rowtype;
  v_session public.agent_sessions%rowtype;
  v_refusal jsonb;
  v_decision jsonb;
  v_history jsonb := '[]'::jsonb;
  v_user_limit integer;
  v_user_window integer;
  v_keys text[];
  v_limits integer[];
  v_windows integer[];
  v_org_budget ops.budgets%rowtype;
  v_global_budget ops.budgets%rowtype;
  v_org_quota boolean;
  v_user_quota boolean;
  v_reserve bigint := greatest(coalesce(p_reserve_tokens, 0), 0);
  v_reserve_usd numeric := 0;
  v_quota record;
  v_spent numeric;
  v_reserved_usd numeric;
  v_retry integer;
  v_month date := date_trunc('month', p_now at time zone 'UTC')::date;
begin
  if p_org_id is null or p_user_id is null then
    raise exception 'org_id and user_id are required' using errcode = '22023';
  end if;
  if p_max_messages is null or p_max_messages < 0 then
    raise exception 'max_messages must be zero or more' using errcode = '22023';
  end if;
  -- 0. Idempotency-Key, before any check or bucket: a replay, a different body
  -- or a duplicate still running ends here (20251231120600_ai_agent_idempotency).
  -- A replay is free; a different body (422) or a duplicate still running
  -- (409) is a refusal, charged below like the others.
  if p_idempotency_key is not null then
    v_idempotency := ops.idempotency_check(p_user_id, p_idempotency_key, p_request_hash, p_now);
    if v_idempotency ->> 'outcome' = 'replay' then return v_idempotency; end if;
    v_refusal := v_idempotency;
  end if;
  -- This transaction writes rate-limit counters and reservations. Not
  -- waiting for the WAL flush at commit shortens how long the hot org row
  -- stays locked; a server crash can forget at most the last few hundred
  -- milliseconds of counts, which is an acceptable price for counters.
  perform set_config('synchronous_commit', 'off', true);

  -- Policies: the (at most four) rows of this org and channel, one index scan.
  for v_policy in
    select p.* from ops.agent_policies p
    where coalesce(p.org_id, v_zero) in (v_zero, p_org_id) and coalesce(p.channel, '') in ('', p_channel)
  loop
    if v_policy.org_id is null and v_policy.channel is null then v_global := v_policy;
    elsif v_policy.org_id is null then v_global_channel := v_policy;
    elsif v_policy.channel is null then v_org := v_policy;
    else v_org_channel := v_policy;
    end if;
  end loop;
  v_user_limit := coalesce(v_org.user_max_requests, v_global.user_max_requests, p_user_limit);
  v_user_window := coalesce(v_org.user_window_seconds, v_global.user_window_seconds, p_window_seconds);

  -- 1. Membership.
  if v_refusal is not null then
    null; -- an Idempotency-Key refusal: decided before membership
  elsif not exists (
    select 1 from public.org_memberships m where m.org_id = p_org_id and m.user_id = p_user_id
  ) then
    v_refusal := jsonb_build_object('outcome', 'forbidden', 'member', false);
  else
    -- 2. Switches: global, this channel for everyone, this tenant, this tenant on this channel.
    if v_global.enabled is false or v_global_channel.enabled is false
       or v_org.enabled is false or v_org_channel.enabled is false then
      return jsonb_build_object(
        'outcome', 'assistant_disabled',
        'member', true,
        'disabled_scope', case when v_global.enabled is false then 'global'
                               when v_global_channel.enabled is false then 'channel'
                               when v_org.enabled is false then 'org' else 'org_channel' end,
        'message', case when v_global.enabled is false then v_global.disabled_message
                        when v_global_channel.enabled is false then v_global_channel.disabled_message
                        when v_org.enabled is false then v_org.disabled_message
                        else v_org_channel.disabled_message end
      );
    end if;

    -- 3. Opt-outs: org-wide or this member; all channels or this one.
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
    -- 4. Session ownership: an id belongs to its first (org, user) for good.
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
  -- A non-member (or a caller whose membership was not checked: an
  -- Idempotency-Key refusal) is held to the global user limit: the org's own
  -- policy is none of its business (its RateLimit headers would show it).
  if v_refusal is not null then
    if (v_refusal ->> 'member') is distinct from 'true' then
      v_user_limit := coalesce(v_global.user_max_requests, p_user_limit);
      v_user_window := coalesce(v_global.user_window_seconds, p_window_seconds);
    end if;
    v_decision := ops.consume_rate_limits(
      array['user:' || p_user_id], array[v_user_limit], array[v_user_window], p_now);
    if not (v_decision ->> 'allowed')::boolean then
      return jsonb_build_object('outcome', 'rate_limit', 'member', v_refusal -> 'member',
                                'rate_limit', v_decision);
    end if;
    return v_refusal || jsonb_build_object('rate_limit', v_decision);
  end if;

  -- 5. History (read before the locks, so they are held briefly), newest
  -- p_max_messages, oldest first; expired reads as empty. Its tokens are
  -- part of the prompt the turn reserves (2 bytes a token, 4 a message:
  -- more than the tokenizer counts, never less for ordinary text).
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

  -- 6. Token quotas and enforced budgets, serialised (see the header).
  v_org_quota := coalesce(v_org.org_tokens_per_minute, v_global.org_tokens_per_minute,
                          v_org.org_tokens_per_day, v_global.org_tokens_per_day) is not null;
  v_user_quota := coalesce(v_org.user_tokens_per_minute, v_global.user_tokens_per_minute,
                           v_org.user_tokens_per_day, v_global.user_tokens_per_day) is not null;
  select b.* into v_org_budget from ops.budgets b where b.org_id = p_org_id and b.mode = 'enforce';
  select b.* into v_global_budget from ops.budgets b where b.org_id is null and b.mode = 'enforce';
  if v_org_quota or v_user_quota or v_org_budget.id is not null or v_global_budget.id is not null then
    if v_history <> '[]'::jsonb then
      v_reserve := v_reserve + (select coalesce(sum(ceil(octet_length(h ->> 'content') / 2.0) + 4), 0)::bigint
                                from jsonb_array_elements(v_history) h);
    end if;
    if v_global_budget.id is not null then
      perform pg_advisory_xact_lock(hashtextextended('agent-chat:admission:global', 0));
    end if;
    perform pg_advisory_xact_lock(hashtextextended('agent-chat:admission:org:' || p_org_id, 0));
    if v_user_quota then
      perform pg_advisory_xact_lock(hashtextextended('agent-chat:admission:user:' || p_user_id, 0));
    end if;

    -- Token quotas: settled tokens in the window plus open reservations plus
    -- this turn's worst case must fit. One statement, one snapshot.
    for v_quota in
      select q.key, q.kind, q.lim, q.win,
             ops.tokens_used(q.key, q.win, p_now) as used,
             (select coalesce(sum(t.tokens), 0) from ops.token_reservations t
              where t.expires_at > p_now
                and case q.kind when 'org' then t.org_id = p_org_id else t.user_id = p_user_id end) as reserved
      from (values
        ('org:' || p_org_id || ':minute', 'org', coalesce(v_org.org_tokens_per_minute, v_global.org_tokens_per_minute), 60),
        ('org:' || p_org_id || ':day', 'org', coalesce(v_org.org_tokens_per_day, v_global.org_tokens_per_day), 86400),
        ('user:' || p_user_id || ':minute', 'user', coalesce(v_org.user_tokens_per_minute, v_global.user_tokens_per_minute), 60),
        ('user:' || p_user_id || ':day', 'user', coalesce(v_org.user_tokens_per_day, v_global.user_tokens_per_day), 86400)
      ) as q (key, kind, lim, win)
      where q.lim is not null
    loop
      if v_quota.used + v_quota.reserved + v_reserve > v_quota.lim then
        v_retry := ops.tokens_retry_after(v_quota.key, v_quota.kind, p_org_id, p_user_id, v_quota.win,
                                          v_quota.used + v_quota.reserved + v_reserve - v_quota.lim,
                                          v_reserve > v_quota.lim, p_now);
        return jsonb_build_object(
          'outcome', 'rate_limit',
          'member', true,
          'rate_limit', jsonb_build_object(
            'allowed', false, 'scope', 'tokens', 'key', 'tokens:' || v_quota.key,
            'limit', v_quota.lim, 'window_seconds', v_quota.win,
            'remaining', greatest(v_quota.lim - v_quota.used - v_quota.reserved, 0),
            'reset_seconds', v_retry, 'retry_after_seconds', v_retry,
            'reserve_tokens', v_reserve));
      end if;
    end loop;

    -- Enforced budgets: refuse once spend plus open reservations reach them.
    v_reserve_usd := coalesce(ops.worst_case_usd(p_model, v_reserve, p_now), 0);
    if v_org_budget.id is not null then
      select coalesce((select c.usd from ops.spend_counters c where c.org_id = p_org_id and c.month = v_month), 0),
             coalesce((select sum(t.usd) from ops.token_reservations t where t.org_id = p_org_id and t.expires_at > p_now), 0)
      into v_spent, v_reserved_usd;
      if v_spent + v_reserved_usd >= v_org_budget.monthly_usd then
        return jsonb_build_object('outcome', 'budget_exceeded', 'member', true,
          'budget', jsonb_build_object('scope', 'org', 'budget_usd', v_org_budget.monthly_usd,
                                       'spent_usd', round(v_spent, 6), 'reserved_usd', round(v_reserved_usd, 6)));
      end if;
    end if;
    if v_global_budget.id is not null then
      select coalesce((select sum(c.usd) from ops.spend_counters c where c.month = v_month), 0),
             coalesce((select sum(t.usd) from ops.token_reservations t where t.expires_at > p_now), 0)
      into v_spent, v_reserved_usd;
      if v_spent + v_reserved_usd >= v_global_budget.monthly_usd then
        return jsonb_build_object('outcome', 'budget_exceeded', 'member', true,
          'budget', jsonb_build_object('scope', 'global', 'budget_usd', v_global_budget.monthly_usd,
                                       'spent_usd', round(v_spent, 6), 'reserved_usd', round(v_reserved_usd, 6)));
      end if;
    end if;
  end if;

  -- 7. Request buckets, all-or-nothing: org:, user:, ip: (when the IP is
  -- known) and the channel: buckets a policy sets.
  v_keys := array['org:' || p_org_id, 'user:' || p_user_id, 'ip:' || nullif(p_client_ip, '')];
  v_limits := array[coalesce(v_org.org_max_requests, v_global.org_max_requests, p_org_limit), v_user_limit,
                    coalesce(v_org.ip_max_requests, v_global.ip_max_requests, p_ip_limit)];
  v_windows := array[coalesce(v_org.org_window_seconds, v_global.org_window_seconds, p_window_seconds), v_user_window,
                     coalesce(v_org.ip_window_seconds, v_global.ip_window_seconds, p_window_seconds)];
  if v_global_channel.channel_max_requests is not null then
    v_keys := v_keys || ('channel:' || p_channel);
    v_limits := v_limits || v_global_channel.channel_max_requests;
    v_windows := v_windows || coalesce(v_global_channel.channel_window_seconds, p_window_seconds);
  end if;
  if v_org_channel.channel_max_requests is not null then
    v_keys := v_keys || ('channel:' || p_org_id || ':' || p_channel);
    v_limits := v_limits || v_org_channel.channel_max_requests;
    v_windows := v_windows || coalesce(v_org_channel.channel_window_seconds, p_window_seconds);
  end if;
  v_decision := ops.consume_rate_limits(v_keys, v_limits, v_windows, p_now);
  if not (v_decision ->> 'allowed')::boolean then
    return jsonb_build_object('outcome', 'rate_limit', 'member', true, 'rate_limit', v_decision);
  end if;

  -- Admitted: the Idempotency-Key is this attempt's until it settles.
  if p_idempotency_key is not null then
    perform ops.idempotency_claim(p_user_id, p_idempotency_key, p_request_hash, p_org_id, p_request_id, p_now);
  end if;

  -- 8. The reservation, when a quota or an enforced budget applies.
  if (v_org_quota or v_user_quota or v_org_budget.id is not null or v_global_budget.id is not null)
     and p_request_id is not null then
    insert into ops.token_reservations (request_id, org_id, user_id, model, tokens, usd, created_at, expires_at)
    values (p_request_id, p_org_id, p_user_id, p_model, v_reserve, v_reserve_usd, p_now,
            p_now + make_interval(secs => greatest(coalesce(p_reserve_seconds, 300), 1)))
    on conflict (request_id) do nothing;
  else
    v_reserve := null;
  end if;

  return jsonb_build_object(
    'outcome', 'ok',
    'member', true,
    'rate_limit', v_decision,
    'reserved_tokens', v_reserve,
    'session_exists', v_session.id is not null and v_session.expires_at > p_now,
    'history', v_history
  );
end;
$$;
comment on function public.agent_begin_turn(uuid, uuid, text, text, uuid, integer, integer, integer, integer, integer, boolean, boolean, text, integer, text, integer, timestamptz, text, text) is
  'agent-chat, before the model, in one call: membership, switches (ops.agent_policies), opt-outs, session ownership (p_session_owned from the Redis store, or the session row), token quotas and enforced budgets (reserving the turn''s worst case under p_request_id), all-or-nothing request buckets org:/user:/ip:/channel: with the policy''s limits (else the arguments), and (Supabase store) the session history. A refusal (forbidden, opt_out, session_not_found) consumes one user: slot and is rate_limit past the user limit. With an Idempotency-Key (p_idempotency_key, checked before anything else): replay, idempotency_mismatch or request_in_progress. Returns {outcome: ok|forbidden|assistant_disabled|opt_out|session_not_found|rate_limit|budget_exceeded|replay|idempotency_mismatch|request_in_progress, member, rate_limit, message, budget, reserved_tokens, history}. service_role only.';

revoke execute on function public.agent_begin_turn(uuid, uuid, text, text, uuid, integer, integer, integer, integer, integer, boolean, boolean, text, integer, text, integer, timestamptz, text, text) from public, anon, authenticated;
grant execute on function public.agent_begin_turn(uuid, uuid, text, text, uuid, integer, integer, integer, integer, integer, boolean, boolean, text, integer, text, integer, timestamptz, text, text) to service_role;

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
