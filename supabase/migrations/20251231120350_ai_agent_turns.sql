-- agent-chat: a turn in the database. One call before the model
-- (agent_begin_turn) and, with the Supabase session store, one after it
-- (agent_finish_turn, which is agent_end_turn plus the usage row of
-- agent_log_usage, defined with the usage log in the migration before).
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
-- The decision is serialised with transaction-scoped advisory locks, taken
-- before any row lock and always in this order: globally for an enforced
-- global budget, per org stripe, per user for user quotas. An org has K
-- stripes (K = org_bucket_shards, 1 by default): a turn takes a free one
-- (try-lock from stripe pg_backend_pid() % K), else waits for that one, so at
-- most K turns of an org decide at once. Each sees the committed
-- reservations and settlements of all the others (a stripe is released at
-- commit), so only the at most K - 1 other turns deciding with it are
-- unseen. The bounds, with w = one turn's worst case:
--   K = 1: an org quota is never exceeded by reservations; an enforced
--          budget is overshot by at most w (a turn is refused once spend
--          plus open reservations reach the budget, and the last one
--          admitted below it may add w).
--   K > 1: an org quota is exceeded by at most (K - 1) w; an enforced org
--          budget is overshot by at most K w. User quotas (user lock) and
--          the global budget (global lock) keep the K = 1 bounds.
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
  p_request_hash text default null,
  p_prompt_copies integer default 1
)
returns jsonb
language plpgsql
set search_path = ''
set plan_cache_mode = force_generic_plan
as $$
-- Hot path, measured (scripts/bench/sql-cost.ts): one statement reads the
-- policies, membership, opt-outs, the session, its history and the enforced
-- budgets (indexed lookups that find nothing when no policy or budget
-- exists); the quota and budget work runs only when one applies; then the
-- bucket decision (two statements). Every statement is a cached generic plan.
declare
  v_zero constant uuid := '00000000-0000-0000-0000-000000000000';
  v_idempotency jsonb;
  v_member boolean;
  v_disabled_scope text;
  v_disabled_message text;
  v_opt_out boolean;
  v_opt_out_user uuid;
  v_opt_out_channel text;
  v_session_org uuid;
  v_session_user uuid;
  v_session_expires timestamptz;
  v_history jsonb;
  v_org_limit integer;
  v_org_window integer;
  v_user_limit integer;
  v_user_window integer;
  v_ip_limit integer;
  v_ip_window integer;
  v_global_user_limit integer;
  v_global_user_window integer;
  v_channel_limit integer;
  v_channel_window integer;
  v_org_channel_limit integer;
  v_org_channel_window integer;
  v_org_tpm integer;
  v_org_tpd integer;
  v_user_tpm integer;
  v_user_tpd integer;
  v_model text;
  v_model_fallbacks text;
  v_org_shards integer;
  v_org_budget numeric;
  v_global_budget numeric;
  v_any_budget boolean;
  v_admission boolean;
  v_refusal jsonb;
  v_decision jsonb;
  v_keys text[];
  v_limits integer[];
  v_windows integer[];
  v_reserve bigint := greatest(coalesce(p_reserve_tokens, 0), 0);
  v_reserve_usd numeric := 0;
  v_quota record;
  v_spent numeric;
  v_reserved_usd numeric;
  v_retry integer;
  v_stripe integer;
begin
  if p_org_id is null or p_user_id is null then
    raise exception 'org_id and user_id are required' using errcode = '22023';
  end if;
  if p_max_messages is null or p_max_messages < 0 then
    raise exception 'max_messages must be zero or more' using errcode = '22023';
  end if;
  -- 0. Idempotency-Key, before any check or bucket (20251231120150_ai_agent_idempotency):
  -- a replay, a duplicate of an attempt still running (409) or a different
  -- body (422) ends the turn. A 422 is a refusal: one slot of the user:
  -- bucket (below). A replay or a 409 is what the protocol asks a client
  -- to do, so it must not eat the user's questions, but it is not free
  -- either: it takes a slot of the user's replay: bucket, ten times the
  -- user limit per user window. They are answered whatever the membership
  -- says (the key is the user's own), but held to the org's limits only for
  -- a member.
  if p_idempotency_key is not null then
    v_idempotency := ops.idempotency_check(p_user_id, p_idempotency_key, p_request_hash, p_now);
    v_refusal := v_idempotency;
  end if;

  -- One statement: the policies of this org and channel (the tenant row,
  -- else the global row, else the arguments), membership, the first active
  -- opt-out, the session row and (when it is the caller's and alive) its
  -- newest p_max_messages, oldest first, and the enforced budgets.
  -- It also sets synchronous_commit off for this transaction: it writes
  -- rate-limit counters and reservations, and not waiting for the WAL flush
  -- at commit shortens how long the hot org row stays locked; a server crash
  -- can forget at most the last few hundred milliseconds of counts, an
  -- acceptable price for counters.
  select exists (select 1 from public.org_memberships m where m.org_id = p_org_id and m.user_id = p_user_id),
         pol.disabled_scope, pol.disabled_message,
         coalesce(pol.org_limit, p_org_limit), coalesce(pol.org_window, p_window_seconds),
         coalesce(pol.user_limit, p_user_limit), coalesce(pol.user_window, p_window_seconds),
         coalesce(pol.ip_limit, p_ip_limit), coalesce(pol.ip_window, p_window_seconds),
         coalesce(pol.global_user_limit, p_user_limit), coalesce(pol.global_user_window, p_window_seconds),
         pol.channel_limit, coalesce(pol.channel_window, p_window_seconds),
         pol.org_channel_limit, coalesce(pol.org_channel_window, p_window_seconds),
         pol.org_tpm, pol.org_tpd, pol.user_tpm, pol.user_tpd, pol.org_shards, pol.model, pol.model_fallbacks,
         bud.org_budget, bud.global_budget, bud.any_budget,
         oo.found, oo.user_id, oo.channel,
         s.org_id, s.user_id, s.expires_at,
         case when p_load_history and p_max_messages > 0 and s.expires_at > p_now
                   and s.org_id = p_org_id and s.user_id = p_user_id and p_session_owned is not false then (
           select coalesce(jsonb_agg(jsonb_build_object('role', h.role, 'content', h.content) order by h.id), '[]'::jsonb)
           from (
             select m.id, m.role, m.content
             from public.agent_session_messages m
             where m.session_id = p_session_id
             order by m.id desc
             limit p_max_messages
           ) h)
         else '[]'::jsonb end
  into v_member, v_disabled_scope, v_disabled_message,
       v_org_limit, v_org_window, v_user_limit, v_user_window, v_ip_limit, v_ip_window,
       v_global_user_limit, v_global_user_window,
       v_channel_limit, v_channel_window, v_org_channel_limit, v_org_channel_window,
       v_org_tpm, v_org_tpd, v_user_tpm, v_user_tpd, v_org_shards, v_model, v_model_fallbacks,
       v_org_budget, v_global_budget, v_any_budget,
       v_opt_out, v_opt_out_user, v_opt_out_channel,
       v_session_org, v_session_user, v_session_expires, v_history
  from (
    -- At most four rows: global, this channel for everyone, this tenant,
    -- this tenant on this channel. Request limits and quotas live on the
    -- channel-less rows, channel limits on the channel rows.
    select (array_agg(case when p.org_id is null then case when p.channel is null then 'global' else 'channel' end
                           else case when p.channel is null then 'org' else 'org_channel' end end
                      order by p.org_id nulls first, p.channel nulls first) filter (where p.enabled is false))[1] as disabled_scope,
           (array_agg(p.disabled_message order by p.org_id nulls first, p.channel nulls first)
              filter (where p.enabled is false))[1] as disabled_message,
           coalesce(max(p.org_max_requests) filter (where p.org_id is not null), max(p.org_max_requests)) as org_limit,
           coalesce(max(p.org_window_seconds) filter (where p.org_id is not null), max(p.org_window_seconds)) as org_window,
           coalesce(max(p.user_max_requests) filter (where p.org_id is not null), max(p.user_max_requests)) as user_limit,
           coalesce(max(p.user_window_seconds) filter (where p.org_id is not null), max(p.user_window_seconds)) as user_window,
           coalesce(max(p.ip_max_requests) filter (where p.org_id is not null), max(p.ip_max_requests)) as ip_limit,
           coalesce(max(p.ip_window_seconds) filter (where p.org_id is not null), max(p.ip_window_seconds)) as ip_window,
           max(p.user_max_requests) filter (where p.org_id is null) as global_user_limit,
           max(p.user_window_seconds) filter (where p.org_id is null) as global_user_window,
           max(p.channel_max_requests) filter (where p.org_id is null) as channel_limit,
           max(p.channel_window_seconds) filter (where p.org_id is null) as channel_window,
           max(p.channel_max_requests) filter (where p.org_id is not null) as org_channel_limit,
           max(p.channel_window_seconds) filter (where p.org_id is not null) as org_channel_window,
           coalesce(max(p.org_tokens_per_minute) filter (where p.org_id is not null), max(p.org_tokens_per_minute)) as org_tpm,
           coalesce(max(p.org_tokens_per_day) filter (where p.org_id is not null), max(p.org_tokens_per_day)) as org_tpd,
           coalesce(max(p.user_tokens_per_minute) filter (where p.org_id is not null), max(p.user_tokens_per_minute)) as user_tpm,
           coalesce(max(p.user_tokens_per_day) filter (where p.org_id is not null), max(p.user_tokens_per_day)) as user_tpd,
           coalesce(max(p.org_bucket_shards) filter (where p.org_id is not null), max(p.org_bucket_shards)) as org_shards,
           coalesce(max(p.model) filter (where p.org_id is not null), max(p.model)) as model,
           coalesce(max(p.model_fallbacks) filter (where p.org_id is not null), max(p.model_fallbacks)) as model_fallbacks
    from ops.agent_policies p
    where coalesce(p.org_id, v_zero) in (v_zero, p_org_id) and coalesce(p.channel, '') in ('', p_channel)
  ) pol
  cross join (
    select max(b.monthly_usd) filter (where b.org_id is not null and b.mode = 'enforce') as org_budget,
           max(b.monthly_usd) filter (where b.org_id is null and b.mode = 'enforce') as global_budget,
           -- Any budget, alert mode too: its turns reserve, so that switching
           -- it to enforce counts the turns already in flight.
           count(*) > 0 as any_budget
    from ops.budgets b
    where coalesce(b.org_id, v_zero) in (v_zero, p_org_id)
  ) bud
  left join lateral (
    select true as found, o.user_id, o.channel
    from public.agent_opt_outs o
    where o.org_id = p_org_id
      and (o.user_id is null or o.user_id = p_user_id)
      and (o.channel is null or o.channel = p_channel)
      and (o.expires_at is null or o.expires_at > p_now)
    order by o.user_id nulls first, o.channel nulls first
    limit 1
  ) oo on true
  left join lateral (
    select s.org_id, s.user_id, s.expires_at from public.agent_sessions s where s.id = p_session_id
  ) s on true
  where set_config('synchronous_commit', 'off', true) is not null;

  -- 1. Membership. 2. Switches: global, this channel for everyone, this
  -- tenant, this tenant on this channel (members only: a non-member learns
  -- nothing about the org). 3. Opt-outs: org-wide or this member; all
  -- channels or this one. 4. Session ownership: an id belongs to its first
  -- (org, user) for good.
  if v_refusal is not null then
    v_refusal := v_refusal || jsonb_build_object('member', v_member); -- decided by the Idempotency-Key
  elsif not v_member then
    v_refusal := '{"outcome": "forbidden", "member": false}';
  elsif v_disabled_scope is not null then
    return jsonb_build_object('outcome', 'assistant_disabled', 'member', true,
                              'disabled_scope', v_disabled_scope, 'message', v_disabled_message);
  elsif v_opt_out then
    v_refusal := jsonb_build_object('outcome', 'opt_out', 'member', true,
                                    'opt_out_scope', case when v_opt_out_user is null then 'org' else 'user' end,
                                    'opt_out_channel', v_opt_out_channel);
  elsif p_session_owned is false or v_session_org <> p_org_id or v_session_user <> p_user_id then
    v_refusal := '{"outcome": "session_not_found", "member": true}';
  end if;

  -- A refusal (or an Idempotency-Key outcome) costs one slot of the user:
  -- bucket; past the limit it is rate_limit. A non-member is held to the
  -- global user limit: the org's own policy is none of its business (its
  -- RateLimit headers would show it).
  if v_refusal is not null then
    if (v_refusal ->> 'member') is distinct from 'true' then
      v_user_limit := v_global_user_limit;
      v_user_window := v_global_user_window;
    end if;
    if v_refusal ->> 'outcome' in ('replay', 'request_in_progress') then
      v_decision := ops.consume_rate_limits(
        array['replay:' || p_user_id], array[least(v_user_limit::bigint * 10, 2147483647)::integer],
        array[v_user_window], p_now);
    else
      v_decision := ops.consume_rate_limits(
        array['user:' || p_user_id], array[v_user_limit], array[v_user_window], p_now);
    end if;
    if not (v_decision ->> 'allowed')::boolean then
      return jsonb_build_object('outcome', 'rate_limit', 'member', v_refusal -> 'member',
                                'rate_limit', v_decision);
    end if;
    return v_refusal || jsonb_build_object('rate_limit', v_decision);
  end if;

  -- 5. Token quotas and enforced budgets, serialised (see the header); none
  -- of this runs when no quota or enforced budget applies. The history read
  -- above is part of the prompt the turn reserves, counted as the function
  -- counts its part (admission.ts reserveTokens): one token per UTF-8 byte
  -- (no byte-level tokenizer makes more) and 4 a message, once per model
  -- call that may be billed (p_prompt_copies: the first and its retries).
  v_admission := coalesce(v_org_tpm, v_org_tpd, v_user_tpm, v_user_tpd) is not null or v_any_budget;
  if v_admission then
    if v_history <> '[]'::jsonb then
      v_reserve := v_reserve + greatest(coalesce(p_prompt_copies, 1), 1)
        * (select coalesce(sum(octet_length(h ->> 'content') + 4), 0)::bigint from jsonb_array_elements(v_history) h);
    end if;
    if v_global_budget is not null then
      perform pg_advisory_xact_lock(hashtextextended('agent-chat:admission:global', 0));
    end if;
    if coalesce(v_org_shards, 1) = 1 then
      perform pg_advisory_xact_lock(hashtextextended('agent-chat:admission:org:' || p_org_id, 0));
    else
      -- One of K stripes: the first free one from this backend's, else wait for it.
      v_stripe := pg_backend_pid() % v_org_shards;
      for i in 0 .. v_org_shards - 1 loop
        exit when pg_try_advisory_xact_lock(hashtextextended(
          'agent-chat:admission:org:' || p_org_id || '#' || (v_stripe + i) % v_org_shards, 0));
        if i = v_org_shards - 1 then
          perform pg_advisory_xact_lock(hashtextextended('agent-chat:admission:org:' || p_org_id || '#' || v_stripe, 0));
        end if;
      end loop;
    end if;
    if coalesce(v_user_tpm, v_user_tpd) is not null then
      perform pg_advisory_xact_lock(hashtextextended('agent-chat:admission:user:' || p_user_id, 0));
    end if;

    -- Token quotas: settled tokens in the window (every shard of the
    -- counter) plus open reservations plus this turn's worst case must fit.
    -- One statement, one snapshot.
    if coalesce(v_org_tpm, v_org_tpd, v_user_tpm, v_user_tpd) is not null then
      for v_quota in
        select q.key, q.kind, q.lim, q.win,
               coalesce((select sum(s.n)::bigint
                         from ops.token_counters c
                         cross join lateral unnest(c.slot_ids, c.slot_tokens) as s (id, n)
                         where c.counter_key = q.key
                           and s.id >= ((extract(epoch from p_now) * 1000)::bigint - q.win::bigint * 1000) / c.slot_ms), 0) as used,
               (select coalesce(sum(t.tokens), 0) from ops.token_reservations t
                where t.expires_at > p_now
                  and case q.kind when 'org' then t.org_id = p_org_id else t.user_id = p_user_id end) as reserved
        from (values
          ('org:' || p_org_id || ':minute', 'org', v_org_tpm, 60),
          ('org:' || p_org_id || ':day', 'org', v_org_tpd, 86400),
          ('user:' || p_user_id || ':minute', 'user', v_user_tpm, 60),
          ('user:' || p_user_id || ':day', 'user', v_user_tpd, 86400)
        ) as q (key, kind, lim, win)
        where q.lim is not null
      loop
        -- Every full quota is checked: the refusal names the one that frees
        -- last, so a client that waits its Retry-After fits them all. A turn
        -- larger than a quota itself never fits: that refusal wins and says
        -- so (never_fits), and the function promises no Retry-After.
        if v_quota.used + v_quota.reserved + v_reserve > v_quota.lim then
          v_retry := ops.tokens_retry_after(v_quota.key, v_quota.kind, p_org_id, p_user_id, v_quota.win,
                                            v_quota.used + v_quota.reserved + v_reserve - v_quota.lim,
                                            v_reserve > v_quota.lim, p_now);
          if v_refusal is null
             or (v_reserve > v_quota.lim and not (v_refusal ->> 'never_fits')::boolean)
             or (v_retry > (v_refusal ->> 'retry_after_seconds')::integer
                 and (v_reserve > v_quota.lim) = (v_refusal ->> 'never_fits')::boolean) then
            v_refusal := jsonb_build_object(
              'allowed', false, 'scope', 'tokens', 'key', 'tokens:' || v_quota.key,
              'limit', v_quota.lim, 'window_seconds', v_quota.win,
              'remaining', greatest(v_quota.lim - v_quota.used - v_quota.reserved, 0),
              'reset_seconds', v_retry, 'retry_after_seconds', v_retry,
              'reserve_tokens', v_reserve, 'never_fits', v_reserve > v_quota.lim);
          end if;
        end if;
      end loop;
      if v_refusal is not null then
        return jsonb_build_object('outcome', 'rate_limit', 'member', true, 'rate_limit', v_refusal);
      end if;
    end if;

    -- Enforced budgets: refuse once spend (every shard of the month) plus
    -- open reservations reach them. The reservation holds its tokens at the
    -- model's highest per-token price.
    v_reserve_usd := ops.worst_case_usd(coalesce(v_model, p_model), v_reserve, p_now);
    -- A model without a price could spend without limit under an enforced
    -- budget: refused until ops.model_prices has its price (fail closed).
    if v_reserve_usd is null and coalesce(v_org_budget, v_global_budget) is not null then
      return jsonb_build_object('outcome', 'budget_exceeded', 'member', true,
        'budget', jsonb_build_object('scope', case when v_org_budget is not null then 'org' else 'global' end,
                                     'budget_usd', coalesce(v_org_budget, v_global_budget),
                                     'unpriced_model', coalesce(v_model, p_model)));
    end if;
    v_reserve_usd := coalesce(v_reserve_usd, 0);
    if v_org_budget is not null then
      select coalesce((select sum(c.usd) from ops.spend_counters c
                       where c.org_id = p_org_id and c.month = date_trunc('month', p_now at time zone 'UTC')::date), 0),
             coalesce((select sum(t.usd) from ops.token_reservations t where t.org_id = p_org_id and t.expires_at > p_now), 0)
      into v_spent, v_reserved_usd;
      if v_spent + v_reserved_usd >= v_org_budget then
        return jsonb_build_object('outcome', 'budget_exceeded', 'member', true,
          'budget', jsonb_build_object('scope', 'org', 'budget_usd', v_org_budget,
                                       'spent_usd', round(v_spent, 6), 'reserved_usd', round(v_reserved_usd, 6)));
      end if;
    end if;
    if v_global_budget is not null then
      select coalesce((select sum(c.usd) from ops.spend_counters c
                       where c.month = date_trunc('month', p_now at time zone 'UTC')::date), 0),
             coalesce((select sum(t.usd) from ops.token_reservations t where t.expires_at > p_now), 0)
      into v_spent, v_reserved_usd;
      if v_spent + v_reserved_usd >= v_global_budget then
        return jsonb_build_object('outcome', 'budget_exceeded', 'member', true,
          'budget', jsonb_build_object('scope', 'global', 'budget_usd', v_global_budget,
                                       'spent_usd', round(v_spent, 6), 'reserved_usd', round(v_reserved_usd, 6)));
      end if;
    end if;
  end if;

  -- 6. Request buckets, all-or-nothing: org:, user:, ip: (when the IP is
  -- known) and the channel: buckets a policy sets. A hot tenant's org:
  -- bucket may be split into shards (org_bucket_shards, 20251231120100).
  if v_channel_limit is null and v_org_channel_limit is null then
    v_decision := ops.consume_rate_limits(
      array['org:' || p_org_id, 'user:' || p_user_id, 'ip:' || nullif(p_client_ip, '')],
      array[v_org_limit, v_user_limit, v_ip_limit],
      array[v_org_window, v_user_window, v_ip_window],
      p_now, v_org_shards);
  else
    v_keys := array['org:' || p_org_id, 'user:' || p_user_id, 'ip:' || nullif(p_client_ip, '')];
    v_limits := array[v_org_limit, v_user_limit, v_ip_limit];
    v_windows := array[v_org_window, v_user_window, v_ip_window];
    if v_channel_limit is not null then
      v_keys := v_keys || ('channel:' || p_channel);
      v_limits := v_limits || v_channel_limit;
      v_windows := v_windows || v_channel_window;
    end if;
    if v_org_channel_limit is not null then
      v_keys := v_keys || ('channel:' || p_org_id || ':' || p_channel);
      v_limits := v_limits || v_org_channel_limit;
      v_windows := v_windows || v_org_channel_window;
    end if;
    v_decision := ops.consume_rate_limits(v_keys, v_limits, v_windows, p_now, v_org_shards);
  end if;
  if not (v_decision ->> 'allowed')::boolean then
    return jsonb_build_object('outcome', 'rate_limit', 'member', true, 'rate_limit', v_decision);
  end if;

  -- Admitted: the Idempotency-Key is this attempt's until it settles.
  if p_idempotency_key is not null then
    perform ops.idempotency_claim(p_user_id, p_idempotency_key, p_request_hash, p_org_id, p_request_id, p_now);
  end if;

  -- 7. The reservation, when a quota or an enforced budget applies.
  if v_admission and p_request_id is not null then
    insert into ops.token_reservations (request_id, org_id, user_id, model, tokens, usd, created_at, expires_at)
    values (p_request_id, p_org_id, p_user_id, coalesce(v_model, p_model), v_reserve, v_reserve_usd, p_now,
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
    'session_exists', coalesce(v_session_expires > p_now, false),
    'history', v_history,
    'model', v_model,
    'model_fallbacks', v_model_fallbacks
  );
end;
$$;
comment on function public.agent_begin_turn(uuid, uuid, text, text, uuid, integer, integer, integer, integer, integer, boolean, boolean, text, integer, text, integer, timestamptz, text, text, integer) is
  'agent-chat, before the model, in one call: membership, switches (ops.agent_policies), opt-outs, session ownership (p_session_owned from the Redis store, or the session row), token quotas and enforced budgets (reserving the turn''s worst case under p_request_id), all-or-nothing request buckets org:/user:/ip:/channel: with the policy''s limits (else the arguments), and (Supabase store) the session history. A refusal (forbidden, opt_out, session_not_found) consumes one user: slot and is rate_limit past the user limit. With an Idempotency-Key (p_idempotency_key, checked before anything else): replay, idempotency_mismatch (one user: slot, like a refusal) or request_in_progress (a replay and a 409 take a slot of the replay: bucket, ten times the user limit). Returns {outcome: ok|forbidden|assistant_disabled|opt_out|session_not_found|rate_limit|budget_exceeded|replay|idempotency_mismatch|request_in_progress, member, rate_limit, message, budget, reserved_tokens, history, model and model_fallbacks (the policy''s, or null: the environment''s)}. service_role only.';


-- ---------------------------------------------------------------------------
-- public.agent_end_turn: store one answered turn (Supabase store, usage log
-- off; with the usage log agent_finish_turn calls it and logs usage).
--
-- The session row is one upsert with the owner check: a new session is
-- inserted, a live session of the same (org, user) is refreshed; the row is
-- locked either way, so concurrent turns on one session queue there. Only
-- when the upsert finds another owner or an expired session does a second
-- statement look at the row. A brand-new session holds just the two new
-- messages, so it is not trimmed.
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
set plan_cache_mode = force_generic_plan
as $$
declare
  v_expires timestamptz := p_now + make_interval(secs => p_ttl_seconds);
  v_new boolean;
  v_org uuid;
  v_user uuid;
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

  -- xmax = 0 only on a row this statement inserted (an updated row carries
  -- this transaction's id as its locker).
  insert into public.agent_sessions as s (id, org_id, user_id, channel, created_at, updated_at, expires_at)
  values (p_session_id, p_org_id, p_user_id, coalesce(p_channel, 'app'), p_now, p_now, v_expires)
  on conflict (id) do update
  set updated_at = p_now, expires_at = v_expires
  where s.org_id = p_org_id and s.user_id = p_user_id and s.expires_at > p_now
  returning s.xmax = 0 into v_new;
  if v_new is null then
    -- Another owner's session, or an expired one (the upsert locked it).
    select s.org_id, s.user_id into v_org, v_user from public.agent_sessions s where s.id = p_session_id;
    if v_org <> p_org_id or v_user <> p_user_id then
      return jsonb_build_object('outcome', 'session_not_found');
    end if;
    -- A session revived after expiry starts empty, as it read.
    delete from public.agent_session_messages m where m.session_id = p_session_id;
    update public.agent_sessions s set updated_at = p_now, expires_at = v_expires where s.id = p_session_id;
    v_new := true;
  end if;

  insert into public.agent_session_messages (session_id, role, content, created_at)
  values (p_session_id, 'user', p_user_message, p_now),
         (p_session_id, 'assistant', p_assistant_message, p_now);

  -- Keep the newest p_max_messages. At most 64 older rows go per turn, so a
  -- turn costs the same however much history a session holds (after the cap
  -- is lowered, say); the rest goes on later turns, or all at once when the
  -- session has expired (ops.purge_expired).
  -- Readers never see the excess: they read the newest p_max_messages.
  if not v_new or p_max_messages < 2 then
    delete from public.agent_session_messages m
    where m.id in (
      select o.id from public.agent_session_messages o
      where o.session_id = p_session_id
        and o.id <= (select c.id from public.agent_session_messages c
                     where c.session_id = p_session_id
                     order by c.id desc
                     offset p_max_messages
                     limit 1)
      order by o.id
      limit 64
    );
  end if;

  return jsonb_build_object('outcome', 'ok', 'session_id', p_session_id, 'expires_at', v_expires);
end;
$$;
comment on function public.agent_end_turn(uuid, uuid, uuid, text, text, text, integer, integer, timestamptz) is
  'agent-chat, after the model: appends the user message and the reply, trims to p_max_messages, refreshes expires_at. Creates the session on its first turn; another owner gets {outcome: session_not_found}. service_role only.';

-- ---------------------------------------------------------------------------
-- public.agent_finish_turn: an answered turn and its usage row in one round
-- trip (Supabase store): one call and one commit instead of two. The turn
-- is saved by agent_end_turn and the row written by agent_log_usage, each
-- the one body of its behaviour (metered once, settling the reservation and
-- the Idempotency-Key); no exception block: a call that fails saves nothing
-- and the function logs the usage row on its own path (usage_logged false).
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
-- A request-id guard (an advisory lock, one index lookup), then two calls.
declare
  v_saved jsonb;
begin
  -- Idempotent by the usage row's request id: a save the function sends
  -- again after an unknown outcome (timed out, connection lost: recovery.ts)
  -- waits here for the first to end, and appends nothing when the first
  -- landed (its usage row is there). So a turn is saved and metered once.
  if p_usage ? 'request_id' then
    perform pg_advisory_xact_lock(hashtextextended('agent-chat:turn:' || (p_usage ->> 'request_id'), 0));
    if exists (select 1 from public.agent_usage_events e
               where e.request_id = left(p_usage ->> 'request_id', 128)
                 and (e.metadata -> 'aggregated') is distinct from 'true'::jsonb) then
      return jsonb_build_object('outcome', 'ok', 'session_id', p_session_id, 'usage_logged', true,
                                'already_saved', true);
    end if;
  end if;
  v_saved := public.agent_end_turn(p_session_id, p_org_id, p_user_id, p_channel, p_user_message,
                                   p_assistant_message, p_ttl_seconds, p_max_messages, now());
  -- Another owner's session: the caller logs that outcome itself.
  if v_saved ->> 'outcome' <> 'ok' then
    return v_saved || '{"usage_logged": false}';
  end if;
  if p_usage is not null then
    perform public.agent_log_usage(p_usage);
  end if;
  return v_saved || jsonb_build_object('usage_logged', p_usage is not null);
end;
$$;
comment on function public.agent_finish_turn(uuid, uuid, uuid, text, text, text, integer, integer, jsonb) is
  'agent-chat, Supabase store: agent_end_turn, then (when the turn was saved) the usage row of p_usage as agent_log_usage writes it, in one transaction. Idempotent by p_usage.request_id: sent again, it waits for the first call and saves nothing more when that one landed (already_saved). Returns the end-turn result plus usage_logged. service_role only.';

-- ---------------------------------------------------------------------------
-- Privileges of every function above, in one statement each (checked by
-- supabase/tests/database/004_privileges_inventory.test.sql): service_role
-- alone may execute them.
-- ---------------------------------------------------------------------------
revoke execute on function
  public.agent_begin_turn(uuid, uuid, text, text, uuid, integer, integer, integer, integer, integer, boolean, boolean, text, integer, text, integer, timestamptz, text, text, integer),
  public.agent_end_turn(uuid, uuid, uuid, text, text, text, integer, integer, timestamptz),
  public.agent_finish_turn(uuid, uuid, uuid, text, text, text, integer, integer, jsonb)
from public, anon, authenticated;
grant execute on function
  public.agent_begin_turn(uuid, uuid, text, text, uuid, integer, integer, integer, integer, integer, boolean, boolean, text, integer, text, integer, timestamptz, text, text, integer),
  public.agent_end_turn(uuid, uuid, uuid, text, text, text, integer, integer, timestamptz),
  public.agent_finish_turn(uuid, uuid, uuid, text, text, text, integer, integer, jsonb)
to service_role;
