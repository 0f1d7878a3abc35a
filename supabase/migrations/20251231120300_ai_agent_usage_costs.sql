-- agent-chat: the usage log's insert, prices, and the reports built on the
-- usage log (cost per month, month-to-date spend, requests, success rate and
-- latency per time bucket). Only service_role may execute or read them.

-- ---------------------------------------------------------------------------
-- Outcomes: which error codes are the service's fault.
-- ---------------------------------------------------------------------------
create function ops.is_served_outcome(p_success boolean, p_error_code text)
returns boolean
language sql
immutable
set search_path = ''
as $$
  select p_success or coalesce(p_error_code, 'internal_error') in ('openai_error', 'upstream_unavailable', 'session_store_error', 'internal_error');
$$;
comment on function ops.is_served_outcome(boolean, text) is
  'True for requests the service tried to answer (success, openai_error, upstream_unavailable, session_store_error, internal_error). Refusals caused by the client (rate_limit, opt_out, invalid_request, unauthorized, forbidden, session_not_found) do not count against the success rate.';

-- ---------------------------------------------------------------------------
-- Billing: which rows cost money.
-- ---------------------------------------------------------------------------
create function ops.is_billed(p_prompt_tokens integer, p_completion_tokens integer, p_total_tokens integer)
returns boolean
language plpgsql
immutable
set search_path = ''
as $$
-- plpgsql, not sql: the settlement trigger calls it on every usage row, and
-- a sql function with a SET clause is planned again on every such call.
begin
  return coalesce(p_prompt_tokens, 0) > 0 or coalesce(p_completion_tokens, 0) > 0 or coalesce(p_total_tokens, 0) > 0;
end;
$$;
comment on function ops.is_billed(integer, integer, integer) is
  'True for a row that reports tokens: a model call was made and is billed, whatever happened after it (success, client_closed, a failed save, a session taken over). Cost views and budgets count every billed row, not only successes.';

-- ---------------------------------------------------------------------------
-- Prices: one lookup (ops.model_price), priced two ways.
-- ---------------------------------------------------------------------------
-- plpgsql: its plan is cached for the session, so the settlement trigger
-- and agent_begin_turn pay a lookup, not a planning, per call.
create function ops.model_price(p_model text, p_at timestamptz default now())
returns ops.model_prices
language plpgsql
stable
set search_path = ''
as $$
declare
  v_price ops.model_prices;
begin
  select p.* into v_price
  from ops.model_prices p
  where (p.model = p_model or starts_with(p_model, p.model || '-'))
    and p.effective_from <= p_at
  order by length(p.model) desc, p.effective_from desc
  limit 1;
  return v_price;
end;
$$;
comment on function ops.model_price(text, timestamptz) is
  'The price row of a model at an instant: the newest row effective at p_at whose model equals p_model or is its prefix before a dated suffix (gpt-4.1-mini prices gpt-4.1-mini-2025-04-14); all fields NULL when the model has no price.';

-- Price of one event, or NULL when no price row matches its model.
create function ops.event_cost_usd(
  p_model text,
  p_created_at timestamptz,
  p_prompt_tokens integer,
  p_cached_prompt_tokens integer,
  p_completion_tokens integer
)
returns numeric
language plpgsql
stable
set search_path = ''
as $$
declare
  v_price ops.model_prices := ops.model_price(p_model, p_created_at);
begin
  return (greatest(coalesce(p_prompt_tokens, 0) - coalesce(p_cached_prompt_tokens, 0), 0) * v_price.input_usd_per_million
          + coalesce(p_cached_prompt_tokens, 0) * v_price.cached_input_usd_per_million
          + coalesce(p_completion_tokens, 0) * v_price.output_usd_per_million) / 1000000;
end;
$$;
comment on function ops.event_cost_usd(text, timestamptz, integer, integer, integer) is
  'Estimated USD cost of one usage event from ops.model_prices; NULL when the model has no price.';

-- Worst-case USD of p_tokens tokens at the model's highest per-token price
-- (what a reservation holds against an enforced budget); NULL when unpriced.
create function ops.worst_case_usd(p_model text, p_tokens bigint, p_at timestamptz default now())
returns numeric
language plpgsql
stable
set search_path = ''
as $$
declare
  v_price ops.model_prices := ops.model_price(p_model, p_at);
begin
  return coalesce(p_tokens, 0)
         * greatest(v_price.input_usd_per_million, v_price.cached_input_usd_per_million, v_price.output_usd_per_million)
         / 1000000;
end;
$$;
comment on function ops.worst_case_usd(text, bigint, timestamptz) is
  'USD of p_tokens tokens of a model at its highest per-token price (input, cached input or output): the cost a token reservation holds against an enforced budget. NULL when the model has no price (agent_begin_turn then refuses the turn under an enforced budget: price every model you enforce a budget on).';

-- ---------------------------------------------------------------------------
-- public.agent_log_usage: the single insert per request.
--
-- Metered exactly once: a row whose request_id is already logged (and is not
-- an aggregated row) is skipped (`on conflict do nothing` against the
-- partial unique index on request_id). A save that timed out in the
-- function but committed later writes its row through agent_finish_turn
-- after the function logged the same request itself: the second row never
-- lands, whichever comes first.
-- ---------------------------------------------------------------------------
create function public.agent_log_usage(p_event jsonb)
returns void
language plpgsql
set search_path = ''
set plan_cache_mode = force_generic_plan
as $$
begin
  -- An Idempotency-Key's attempt settles with its usage row (20251231120150_ai_agent_idempotency).
  if p_event ? 'idempotency' then perform ops.idempotency_settle(p_event); end if;
  insert into public.agent_usage_events (
    request_id, org_id, user_id, session_id, channel, model,
    prompt_tokens, cached_prompt_tokens, completion_tokens, total_tokens,
    latency_ms, success, error_code, error_message, event_count, metadata, created_at
  )
  select
    left(e.request_id, 128), e.org_id, e.user_id, e.session_id, left(e.channel, 64), left(e.model, 128),
    -- Token counts come from the upstream: a negative one is stored as 0, so it can
    -- never lower a month's spend.
    case when e.prompt_tokens < 0 then 0 else e.prompt_tokens end,
    case when e.cached_prompt_tokens < 0 then 0 else e.cached_prompt_tokens end,
    case when e.completion_tokens < 0 then 0 else e.completion_tokens end,
    case when e.total_tokens < 0 then 0 else e.total_tokens end,
    e.latency_ms, coalesce(e.success, false), left(e.error_code, 64), left(e.error_message, 2000),
    greatest(coalesce(e.event_count, 1), 1), coalesce(e.metadata, '{}'::jsonb), coalesce(e.created_at, now())
  from jsonb_to_record(p_event) as e (
    request_id text, org_id uuid, user_id uuid, session_id uuid, channel text, model text,
    prompt_tokens integer, cached_prompt_tokens integer, completion_tokens integer, total_tokens integer,
    latency_ms integer, success boolean, error_code text, error_message text, event_count integer,
    metadata jsonb, created_at timestamptz
  )
  on conflict do nothing;
end $$;
comment on function public.agent_log_usage(jsonb) is
  'agent-chat: inserts one row into public.agent_usage_events from a JSON object with the table''s column names (event_count defaults to 1). A request_id already logged is skipped, so a model call is metered once. service_role only.';

-- ---------------------------------------------------------------------------
-- Prices that cannot be dodged: an upstream (an OpenAI-compatible gateway)
-- may report a model name that has no price (`openai/gpt-4.1-mini`), which
-- would cost $0 and never fill an enforced budget. The function writes the
-- model it asked for as metadata.requested_model when the reported name
-- differs; a row whose reported name has no price is charged at the
-- requested model's price and says so: metadata.priced_as. Every cost (the
-- spend counters, the reports, the views) prices
-- coalesce(metadata ->> 'priced_as', model); the reported name stays in
-- `model`, shows in ops.monthly_cost and raises the unpriced_model alert.
-- ---------------------------------------------------------------------------
create function ops.priced_as(p_model text, p_requested_model text, p_at timestamptz)
returns text
language plpgsql
stable
set search_path = ''
as $$
begin
  if p_requested_model is null or (ops.model_price(p_model, p_at)).model is not null
     or (ops.model_price(p_requested_model, p_at)).model is null then
    return null;
  end if;
  return p_requested_model;
end;
$$;
comment on function ops.priced_as(text, text, timestamptz) is
  'The model a usage row is priced as instead of its reported name: the requested model, when the reported name has no price in ops.model_prices and the requested one has; NULL otherwise (the row is priced as reported).';

create function ops.price_as_requested()
returns trigger
language plpgsql
set search_path = ''
as $$
declare
  v_priced_as text;
begin
  if new.metadata ? 'requested_model' then
    v_priced_as := ops.priced_as(new.model, new.metadata ->> 'requested_model', new.created_at);
    if v_priced_as is not null then
      new.metadata := new.metadata || jsonb_build_object('priced_as', v_priced_as);
    end if;
  end if;
  return new;
end;
$$;
comment on function ops.price_as_requested() is
  'Trigger of public.agent_usage_events (before insert): records metadata.priced_as (ops.priced_as) on a row whose reported model has no price.';
create trigger agent_usage_events_price_as_requested
  before insert on public.agent_usage_events
  for each row execute function ops.price_as_requested();

-- ---------------------------------------------------------------------------
-- Settlement: every metered model call releases its request's reservation,
-- adds its tokens to the org's and the user's token counters, and its cost
-- to the org's month-to-date spend. One body (ops.settle_usage_event),
-- called by the usage-row trigger (so every writer: agent_log_usage,
-- agent_finish_turn, a backfill, settles the same way) and, with the usage
-- log off, by agent_settle_usage without a row: logging off stops rows,
-- never the counters.
-- ---------------------------------------------------------------------------
create function ops.settle_usage_event(
  p_request_id text,
  p_org_id uuid,
  p_user_id uuid,
  p_price_model text,
  p_prompt_tokens integer,
  p_cached_prompt_tokens integer,
  p_completion_tokens integer,
  p_total_tokens integer,
  p_event_count integer,
  p_created_at timestamptz
)
returns void
language plpgsql
set search_path = ''
set plan_cache_mode = force_generic_plan
as $$
-- On every metered call: three statements, each a cached plan, and the
-- price (ops.event_cost_usd). The first releases the reservation and reads
-- the org's shard count K (org_bucket_shards: the tenant row, else the
-- global row, as agent_begin_turn resolves it); the org's counter rows are
-- shard pg_backend_pid() % K, so at most K settling backends of one org
-- write at once without queueing on one row (K = 1: shard 0, one row, as
-- before). Readers sum every shard of a key.
declare
  v_tokens bigint;
  v_at_ms bigint;
  v_now_ms bigint;
  v_shard smallint;
begin
  with released as (delete from ops.token_reservations t where t.request_id = p_request_id)
  select pg_backend_pid() % coalesce(coalesce(max(p.org_bucket_shards) filter (where p.org_id is not null),
                                              max(p.org_bucket_shards)), 1)
  into v_shard
  from ops.agent_policies p
  where coalesce(p.org_id, '00000000-0000-0000-0000-000000000000'::uuid)
          in ('00000000-0000-0000-0000-000000000000'::uuid, p_org_id)
    and coalesce(p.channel, '') = '';
  if p_org_id is null or not ops.is_billed(p_prompt_tokens, p_completion_tokens, p_total_tokens) then
    return;
  end if;
  v_tokens := coalesce(p_total_tokens, coalesce(p_prompt_tokens, 0) + coalesce(p_completion_tokens, 0));
  v_at_ms := (extract(epoch from p_created_at) * 1000)::bigint;
  v_now_ms := (extract(epoch from greatest(p_created_at, now())) * 1000)::bigint;
  -- The four token counters at once, in key order (org:
  -- before user:, day before minute), as every settlement takes them. The
  -- slots are ascending: the ones that left the window are a prefix (k of
  -- them, width_bucket counts the ids below the window), and the row's slot
  -- s goes after the j ids at or before it (usually at the end), or adds to
  -- slot j when that is s. Array expressions only: no unnest, no sort.
  insert into ops.token_counters as c (counter_key, shard, slot_ms, slot_ids, slot_tokens, updated_at)
  select k.key, k.shard, k.win * 50, array[v_at_ms / (k.win * 50)], array[v_tokens], now()
  from (values ('org:' || p_org_id || ':day', v_shard, 86400::bigint), ('org:' || p_org_id || ':minute', v_shard, 60),
               ('user:' || p_user_id || ':day', 0::smallint, 86400), ('user:' || p_user_id || ':minute', 0::smallint, 60))
         as k (key, shard, win)
  where k.key is not null and v_at_ms / (k.win * 50) >= (v_now_ms - k.win * 1000) / (k.win * 50)
  on conflict (counter_key, shard) do update
  set slot_ids = case
        when width_bucket(excluded.slot_ids[1], c.slot_ids) > width_bucket((v_now_ms - excluded.slot_ms * 20) / excluded.slot_ms - 1, c.slot_ids)
             and c.slot_ids[width_bucket(excluded.slot_ids[1], c.slot_ids)] = excluded.slot_ids[1]
        then c.slot_ids[width_bucket((v_now_ms - excluded.slot_ms * 20) / excluded.slot_ms - 1, c.slot_ids) + 1:]
        else c.slot_ids[width_bucket((v_now_ms - excluded.slot_ms * 20) / excluded.slot_ms - 1, c.slot_ids) + 1
                        :width_bucket(excluded.slot_ids[1], c.slot_ids)]
             || excluded.slot_ids
             || c.slot_ids[width_bucket(excluded.slot_ids[1], c.slot_ids) + 1:] end,
      slot_tokens = case
        when width_bucket(excluded.slot_ids[1], c.slot_ids) > width_bucket((v_now_ms - excluded.slot_ms * 20) / excluded.slot_ms - 1, c.slot_ids)
             and c.slot_ids[width_bucket(excluded.slot_ids[1], c.slot_ids)] = excluded.slot_ids[1]
        then c.slot_tokens[width_bucket((v_now_ms - excluded.slot_ms * 20) / excluded.slot_ms - 1, c.slot_ids) + 1
                           :width_bucket(excluded.slot_ids[1], c.slot_ids) - 1]
             || (c.slot_tokens[width_bucket(excluded.slot_ids[1], c.slot_ids)] + excluded.slot_tokens[1])
             || c.slot_tokens[width_bucket(excluded.slot_ids[1], c.slot_ids) + 1:]
        else c.slot_tokens[width_bucket((v_now_ms - excluded.slot_ms * 20) / excluded.slot_ms - 1, c.slot_ids) + 1
                           :width_bucket(excluded.slot_ids[1], c.slot_ids)]
             || excluded.slot_tokens
             || c.slot_tokens[width_bucket(excluded.slot_ids[1], c.slot_ids) + 1:] end,
      updated_at = now();
  -- Month-to-date spend at the price charged (priced_as when the reported
  -- name has none; $0 when neither has a price).
  insert into ops.spend_counters as c (org_id, month, shard, usd, billed_events, updated_at)
  values (p_org_id, date_trunc('month', p_created_at at time zone 'UTC')::date, v_shard,
          coalesce(ops.event_cost_usd(p_price_model, p_created_at, p_prompt_tokens, p_cached_prompt_tokens,
                                      p_completion_tokens), 0),
          greatest(coalesce(p_event_count, 1), 1), now())
  on conflict (org_id, month, shard) do update
  set usd = c.usd + excluded.usd, billed_events = c.billed_events + excluded.billed_events, updated_at = now();
end;
$$;
comment on function ops.settle_usage_event(text, uuid, uuid, text, integer, integer, integer, integer, integer, timestamptz) is
  'Settles one metered model call: releases its token reservation, adds its tokens to ops.token_counters and its cost at p_price_model''s price to ops.spend_counters (the org''s rows on shard pg_backend_pid() % org_bucket_shards). Called by the usage-row trigger and, with the usage log off, by agent_settle_usage.';

create function ops.settle_usage()
returns trigger
language plpgsql
set search_path = ''
as $$
begin
  perform ops.settle_usage_event(new.request_id, new.org_id, new.user_id, coalesce(new.metadata ->> 'priced_as', new.model),
                                 new.prompt_tokens, new.cached_prompt_tokens, new.completion_tokens, new.total_tokens,
                                 new.event_count, new.created_at);
  return null;
end;
$$;
comment on function ops.settle_usage() is
  'Trigger of public.agent_usage_events (after insert): settles the row (ops.settle_usage_event).';
create trigger agent_usage_events_settle
  after insert on public.agent_usage_events
  for each row execute function ops.settle_usage();

-- Rebuilds the spend counters of the months from p_from on from the usage
-- log (after a retroactive price change or a backfill without the trigger):
-- every shard of those months goes, one row per org and month (shard 0)
-- comes back; later settlements spread over the shards again.
create function ops.rebuild_spend_counters(p_from timestamptz default date_trunc('month', now(), 'UTC'))
returns integer
language plpgsql
set search_path = ''
as $$
declare
  v_rows integer;
begin
  delete from ops.spend_counters c where c.month >= date_trunc('month', p_from at time zone 'UTC')::date;
  insert into ops.spend_counters (org_id, month, usd, billed_events)
  select e.org_id, date_trunc('month', e.created_at at time zone 'UTC')::date,
         coalesce(sum(ops.event_cost_usd(coalesce(e.metadata ->> 'priced_as', e.model), e.created_at, e.prompt_tokens, e.cached_prompt_tokens, e.completion_tokens)), 0),
         sum(e.event_count)
  from public.agent_usage_events e
  where e.org_id is not null
    and e.created_at >= date_trunc('month', p_from at time zone 'UTC') at time zone 'UTC'
    and ops.is_billed(e.prompt_tokens, e.completion_tokens, e.total_tokens)
  group by 1, 2;
  get diagnostics v_rows = row_count;
  return v_rows;
end;
$$;
comment on function ops.rebuild_spend_counters(timestamptz) is
  'Recomputes ops.spend_counters from the usage log for the months from p_from on (default: this month); returns the rows written.';

-- ---------------------------------------------------------------------------
-- The usage every report reads: the rollup (20251231120250_ai_agent_usage_scale)
-- at one level for the whole buckets of [p_from, p_to), coarsest first (the
-- whole days, then the whole hours, quarter hours and minutes at either end,
-- no grain coarser than p_grain), plus the raw rows it does not hold: those
-- of the partial minutes at either end, and those above its watermark (not
-- folded yet, late rows included). Each raw row is a cell of its own at its
-- exact created_at; a rollup cell sits at its bucket's start. So the sums
-- over any period equal the raw rows', and so do report buckets made of
-- whole cells (p_grain: the coarsest grain that divides the report's
-- bucket; NULL: raw rows only). A period that ends after every folded row
-- (ops.usage_rollup_state.folded_until: a dashboard up to now) reads the
-- bucket it ends in as a whole one, since that bucket holds nothing folded
-- past the end: the current day, quarter hour or minute is one row, not its
-- hours and minutes.
-- ---------------------------------------------------------------------------
create function ops.usage_cells(
  p_from timestamptz,
  p_to timestamptz,
  p_org_id uuid default null,
  p_grain interval default '1 day',
  p_level text default 'org'
)
returns table (
  at timestamptz,
  org_id uuid,
  model text,
  channel text,
  success boolean,
  error_code text,
  requests bigint,
  billed_requests bigint,
  prompt_tokens bigint,
  cached_prompt_tokens bigint,
  completion_tokens bigint,
  total_tokens bigint,
  usd numeric,
  unpriced_rows bigint,
  latency_values integer[],
  latency_counts bigint[],
  latency_percentiles double precision[]
)
language plpgsql
stable
set search_path = ''
set jit = off
as $$
-- plpgsql so the bounds are values: each rollup range below is an index
-- range scan, and each raw branch one of the partitions it touches.
declare
  v_origin constant timestamptz := '2000-01-01 00:00:00+00';
  -- An org's cells are not in the all rows.
  v_level constant text := case when p_org_id is not null and p_level = 'all' then 'org' else p_level end;
  v_through bigint;
  v_until timestamptz;
  -- No folded row at or after p_to: a bucket that starts before p_to and
  -- ends after it holds only rows before p_to, so it counts as whole.
  v_open boolean;
  v_grain interval;
  v_a timestamptz;
  v_b timestamptz;
  -- [v_lo, v_hi): what the rollup covers; v_range_*: its pieces.
  v_covered boolean := false;
  v_lo timestamptz := p_to;
  v_hi timestamptz := p_to;
  v_range_grains interval[] := '{}';
  v_range_from timestamptz[] := '{}';
  v_range_to timestamptz[] := '{}';
begin
  select s.folded_through, s.folded_until into v_through, v_until from ops.usage_rollup_state s where s.id;
  v_open := isfinite(p_to) and (v_until is null or v_until < p_to);
  if p_grain is not null and p_from < p_to then
    foreach v_grain in array ops.usage_rollup_grains(v_level) loop
      continue when v_grain > p_grain;
      -- The whole buckets of this grain in [p_from, p_to).
      v_a := case when not isfinite(p_from) then p_from
                  else date_bin(v_grain, p_from - interval '1 microsecond', v_origin) + v_grain end;
      v_b := case when not isfinite(p_to) then p_to
                  when v_open then date_bin(v_grain, p_to - interval '1 microsecond', v_origin) + v_grain
                  else date_bin(v_grain, p_to, v_origin) end;
      if not v_covered then
        if v_a < v_b then
          v_range_grains := v_range_grains || v_grain; v_range_from := v_range_from || v_a; v_range_to := v_range_to || v_b;
          v_lo := v_a;
          v_hi := v_b;
          v_covered := true;
        end if;
      else
        -- Finer buckets at either end of what coarser ones cover.
        if v_a < v_lo then
          v_range_grains := v_range_grains || v_grain; v_range_from := v_range_from || v_a; v_range_to := v_range_to || v_lo;
          v_lo := v_a;
        end if;
        if v_b > v_hi then
          v_range_grains := v_range_grains || v_grain; v_range_from := v_range_from || v_hi; v_range_to := v_range_to || v_b;
          v_hi := v_b;
        end if;
      end if;
    end loop;
  end if;
  return query
  select r.bucket_start, r.org_id, r.model, r.channel, r.success, r.error_code, r.requests, r.billed_requests,
         r.prompt_tokens, r.cached_prompt_tokens, r.completion_tokens, r.total_tokens, r.usd, r.unpriced_rows,
         r.latency_values, r.latency_counts, r.latency_percentiles
  from unnest(v_range_grains, v_range_from, v_range_to) as k (grain, from_at, to_at)
  cross join lateral (
    -- offset 0 keeps this a subquery: one index range scan per range, never
    -- a hash join over every row of the level.
    select x.* from ops.usage_rollup x
    where x.level = v_level and x.grain = k.grain and x.bucket_start >= k.from_at and x.bucket_start < k.to_at
      and (p_org_id is null or x.org_id = p_org_id)
    offset 0
  ) r
  union all
  select e.created_at, e.org_id, e.model, e.channel, e.success, e.error_code, e.event_count::bigint,
         case when b.billed then e.event_count else 0 end::bigint,
         coalesce(e.prompt_tokens, 0)::bigint, case when b.billed then coalesce(e.cached_prompt_tokens, 0) else 0 end::bigint,
         coalesce(e.completion_tokens, 0)::bigint, coalesce(e.total_tokens, 0)::bigint,
         case when b.billed then coalesce(c.usd, 0) else 0 end,
         (b.billed and c.usd is null)::integer::bigint,
         case when e.success and e.latency_ms is not null then array[e.latency_ms] end,
         case when e.success and e.latency_ms is not null then array[1::bigint] end,
         null::double precision[]
  from (
    -- The partial minutes at either end, and the rows above the watermark.
    select x.* from public.agent_usage_events x
    where x.created_at >= p_from and x.created_at < v_lo and (p_org_id is null or x.org_id = p_org_id)
    union all
    select x.* from public.agent_usage_events x
    where x.created_at >= greatest(v_hi, p_from) and x.created_at < p_to and (p_org_id is null or x.org_id = p_org_id)
    union all
    select x.* from public.agent_usage_events x
    where x.id > v_through and x.created_at >= v_lo and x.created_at < least(v_hi, p_to)
      and (p_org_id is null or x.org_id = p_org_id)
  ) e
  cross join lateral (select ops.is_billed(e.prompt_tokens, e.completion_tokens, e.total_tokens) as billed) b
  cross join lateral (
    select ops.event_cost_usd(coalesce(e.metadata ->> 'priced_as', e.model), e.created_at, e.prompt_tokens, e.cached_prompt_tokens, e.completion_tokens) as usd
  ) c;
end;
$$;
comment on function ops.usage_cells(timestamptz, timestamptz, uuid, interval, text) is
  'The usage of [p_from, p_to) (one org or all) as cells: rollup rows of level p_level (cell: by org, model, channel and outcome; org: by org and outcome; all: by outcome; an org''s cells come from the org level) in grains no coarser than p_grain, plus the raw rows the rollup does not hold, so sums (and, through latency_values/latency_counts, latency percentiles) equal the raw rows''. A cell sits at its bucket''s start or its created_at (raw row); latency_percentiles are those of an all row''s own distribution. p_grain NULL: raw rows only. What every report, view and alert condition reads.';

-- ---------------------------------------------------------------------------
-- Usage report: the one query behind the health view, the CLI and the HTML
-- report. Buckets are aligned to clock boundaries (date_bin from 2000-01-01
-- 00:00 UTC: quarter hours, hours, days), so a bucket starts at the same
-- instant whenever the report is asked for; only rows in [p_from, p_to) are
-- counted, so the first and last bucket may be partial. A null p_bucket
-- gives one row for the whole period (bucket_start = p_from).
-- ---------------------------------------------------------------------------
create function ops.usage_report(
  p_from timestamptz,
  p_to timestamptz,
  p_bucket interval default '15 minutes',
  p_org_id uuid default null,
  p_by_org boolean default false,
  p_latency boolean default true
)
returns table (
  bucket_start timestamptz,
  org_id uuid,
  requests bigint,
  served bigint,
  succeeded bigint,
  refused bigint,
  success_rate numeric,
  latency_p50_ms numeric,
  latency_p95_ms numeric,
  latency_p99_ms numeric,
  prompt_tokens bigint,
  completion_tokens bigint,
  total_tokens bigint,
  estimated_usd numeric,
  unpriced_events bigint
)
language sql
stable
set search_path = ''
set jit = off
as $$
  -- Cells (rollup rows and raw rows, ops.usage_cells) into buckets: rollup
  -- buckets of the coarsest grain that divides the report's bucket; all orgs
  -- at the all level, an org or per org at the org level. Latency
  -- percentiles are percentile_cont's: a bucket whose answered requests are
  -- one all row's reads that row's percentiles (computed when it was
  -- folded); any other merges its cells' latency counts
  -- (ops.latency_percentiles), so they equal percentile_cont on the raw rows.
  with c as (
    select case when p_bucket is null then p_from
                else date_bin(p_bucket, x.at, timestamptz '2000-01-01 00:00:00+00') end as bucket,
           case when p_by_org then x.org_id end as org,
           ops.is_served_outcome(x.success, x.error_code) as served,
           x.*
    from ops.usage_cells(p_from, p_to, p_org_id,
                         case when p_bucket is null then interval '1 day'
                              when extract(epoch from p_bucket) <= 0 then null
                              when extract(epoch from p_bucket) % 86400 = 0 then interval '1 day'
                              when extract(epoch from p_bucket) % 3600 = 0 then interval '1 hour'
                              when extract(epoch from p_bucket) % 900 = 0 then interval '15 minutes'
                              when extract(epoch from p_bucket) % 60 = 0 then interval '1 minute' end,
                         case when p_by_org or p_org_id is not null then 'org' else 'all' end) x
  ),
  -- Per bucket: how many cells hold answered requests, and the kept
  -- percentiles when one all row is all of them.
  a as (
    select c.bucket, c.org, count(*) as parts, max(c.latency_percentiles) as kept
    from c
    where p_latency and c.latency_values is not null
    group by 1, 2
  ),
  merged as (
    select m.bucket, m.org, ops.latency_percentiles(array_agg(m.v order by m.v), array_agg(m.n order by m.v)) as pct
    from (select c.bucket, c.org, u.v, sum(u.n)::bigint as n
          from c
          join a on a.bucket = c.bucket and a.org is not distinct from c.org and (a.parts > 1 or a.kept is null)
          cross join lateral unnest(c.latency_values, c.latency_counts) as u (v, n)
          group by 1, 2, 3) m
    group by 1, 2
  ),
  p as (
    select a.bucket, a.org, case when a.parts = 1 and a.kept is not null then a.kept else m.pct end as pct
    from a
    left join merged m on m.bucket = a.bucket and m.org is not distinct from a.org
  )
  select
    c.bucket as bucket_start,
    c.org as org_id,
    sum(c.requests)::bigint as requests,
    coalesce(sum(c.requests) filter (where c.served), 0)::bigint as served,
    coalesce(sum(c.requests) filter (where c.success), 0)::bigint as succeeded,
    coalesce(sum(c.requests) filter (where not c.served), 0)::bigint as refused,
    round(
      coalesce(sum(c.requests) filter (where c.success), 0)::numeric
        / nullif(sum(c.requests) filter (where c.served), 0),
      4
    ) as success_rate,
    round(min(p.pct[1])::numeric, 1),
    round(min(p.pct[2])::numeric, 1),
    round(min(p.pct[3])::numeric, 1),
    coalesce(sum(c.prompt_tokens), 0)::bigint,
    coalesce(sum(c.completion_tokens), 0)::bigint,
    coalesce(sum(c.total_tokens), 0)::bigint,
    round(coalesce(sum(c.usd), 0), 6) as estimated_usd,
    coalesce(sum(c.unpriced_rows), 0)::bigint as unpriced_events
  from c
  left join p on p.bucket = c.bucket and p.org is not distinct from c.org
  group by 1, 2
  order by 1, 2;
$$;
comment on function ops.usage_report(timestamptz, timestamptz, interval, uuid, boolean, boolean) is
  'Requests (sum of event_count), success rate (answered / served), latency percentiles of answered requests, tokens and estimated cost of every billed row per time bucket, optionally for one org or per org (p_latency false: no percentiles, for callers that only need the counts). Buckets start on clock boundaries (date_bin from 2000-01-01 00:00 UTC) and do not move between calls; p_bucket null = one row for the whole period, starting at p_from.';

-- Whole quarter hours from 24 hours before the current one, which is last
-- and still filling.
create view ops.health_15m with (security_invoker = true) as
  select * from ops.usage_report(
    date_bin(interval '15 minutes', now(), timestamptz '2000-01-01 00:00:00+00') - interval '24 hours',
    now() + interval '1 second',
    interval '15 minutes');
comment on view ops.health_15m is
  'The last 24 hours in 15-minute buckets on clock boundaries (:00, :15, :30, :45; the current one last): requests, success rate, p50/p95/p99 latency, tokens, estimated cost.';

create view ops.monthly_cost with (security_invoker = true) as
  select
    date_trunc('month', c.at, 'UTC') as month,
    c.org_id,
    c.model,
    sum(c.billed_requests)::bigint as requests,
    coalesce(sum(c.billed_requests) filter (where c.success), 0)::bigint as succeeded,
    coalesce(sum(c.prompt_tokens), 0)::bigint as prompt_tokens,
    coalesce(sum(c.cached_prompt_tokens), 0)::bigint as cached_prompt_tokens,
    coalesce(sum(c.completion_tokens), 0)::bigint as completion_tokens,
    round(coalesce(sum(c.usd), 0), 6) as estimated_usd,
    coalesce(sum(c.unpriced_rows), 0)::bigint as unpriced_events
  from ops.usage_cells('-infinity', 'infinity', null, interval '1 day', 'cell') c
  where c.billed_requests > 0
  group by 1, 2, 3;
comment on view ops.monthly_cost is
  'Estimated monthly cost of every billed request (any row with tokens: answered, client_closed, failed saves) by org and reported model, priced from ops.model_prices (a reported name without a price at the requested model''s, metadata.priced_as; the unpriced_model alert names it). requests = billed requests, succeeded = those answered and stored; unpriced_events > 0 means neither name has a price row.';

-- Month-to-date spend per org (org_id) and in total (org_id NULL).
create function ops.month_to_date_spend(p_now timestamptz default now())
returns table (org_id uuid, estimated_usd numeric)
language sql
stable
set search_path = ''
as $$
  select c.org_id, round(coalesce(sum(c.usd), 0), 6)
  from ops.usage_cells(date_trunc('month', p_now, 'UTC'), p_now + interval '1 microsecond', null, interval '1 day', 'org') c
  where c.billed_requests > 0
  group by grouping sets ((c.org_id), ());
$$;
comment on function ops.month_to_date_spend(timestamptz) is
  'Estimated spend of every billed row (ops.is_billed) since the start of p_now''s month (UTC): one row per org and one with org_id NULL for the total.';

-- Failed and refused requests of a period by error code (the report's "errors by code").
create function ops.errors_by_code(p_from timestamptz, p_to timestamptz, p_org_id uuid default null)
returns table (error_code text, served boolean, requests bigint)
language sql
stable
set search_path = ''
as $$
  select coalesce(c.error_code, 'internal_error'), ops.is_served_outcome(false, c.error_code),
         sum(c.requests)::bigint
  from ops.usage_cells(p_from, p_to, p_org_id, interval '1 day', 'all') c
  where not c.success
  group by 1, 2
  order by 3 desc, 1;
$$;
comment on function ops.errors_by_code(timestamptz, timestamptz, uuid) is
  'Requests that did not succeed in [p_from, p_to), optionally of one org, by error code (sum of event_count); served = true for the failures that count against the success rate, false for refusals.';

-- Month-to-date spend against every budget (global: org_id NULL): the usage
-- log, or the spend counters where they are higher (they keep counting when
-- the usage log is switched off). What budget alerts and the report compare.
create function ops.budget_status(p_now timestamptz default now())
returns table (org_id uuid, mode text, monthly_usd numeric, spent_usd numeric, used_ratio numeric)
language sql
stable
set search_path = ''
as $$
  with spend as (
    select x.org_id, max(x.usd) as usd
    from (select m.org_id, m.estimated_usd as usd from ops.month_to_date_spend(p_now) m
          union all
          select c.org_id, sum(c.usd) from ops.spend_counters c
          where c.month = date_trunc('month', p_now at time zone 'UTC')::date
          group by grouping sets ((c.org_id), ())) x
    group by x.org_id
  )
  select b.org_id, b.mode, b.monthly_usd, coalesce(s.usd, 0),
         round(coalesce(s.usd, 0) / b.monthly_usd, 4)
  from ops.budgets b
  left join spend s on s.org_id is not distinct from b.org_id
  order by b.org_id nulls first;
$$;
comment on function ops.budget_status(timestamptz) is
  'Each budget (org_id NULL = the global one) with the month-to-date estimated spend of p_now''s month against it: the usage log (ops.month_to_date_spend) or the spend counters, whichever is higher. Budget alerts and the report read it.';

-- ---------------------------------------------------------------------------
-- Model fallbacks and circuit breakers, read from the usage rows: an answer
-- is a fallback's when its metadata.model_attempts (written by the function
-- whenever more than one upstream was tried or skipped) does not start with
-- the answer. Breakers live in each isolate; their transitions are on the
-- attempts (breaker: opened | probe | closed), so these reports show every
-- isolate's.
-- ---------------------------------------------------------------------------
create function ops.model_answer_report(p_from timestamptz, p_to timestamptz)
returns table (
  day date,
  model text,
  answers bigint,
  fallback_answers bigint,
  day_answers bigint,
  day_fallback_share numeric
)
language sql
stable
set search_path = ''
as $$
  with per_model as (
    select
      (e.created_at at time zone 'UTC')::date as day,
      e.model,
      sum(e.event_count)::bigint as answers,
      coalesce(sum(e.event_count) filter (
        where e.metadata -> 'model_attempts' -> 0 ->> 'outcome' is distinct from 'answered'
          and jsonb_typeof(e.metadata -> 'model_attempts') = 'array'
      ), 0)::bigint as fallback_answers
    from public.agent_usage_events e
    where e.success
      and e.created_at >= p_from
      and e.created_at < p_to
    group by 1, 2
  )
  select
    m.day, m.model, m.answers, m.fallback_answers,
    sum(m.answers) over w::bigint as day_answers,
    round(sum(m.fallback_answers) over w / nullif(sum(m.answers) over w, 0), 4) as day_fallback_share
  from per_model m
  window w as (partition by m.day)
  order by m.day, m.answers desc;
$$;
comment on function ops.model_answer_report(timestamptz, timestamptz) is
  'Answered requests per UTC day and model (the model that answered), how many of them a fallback answered (the primary failed or its breaker was open), and the share of the whole day answered by fallbacks. A rising day_fallback_share means the primary upstream is failing.';

create view ops.model_answers with (security_invoker = true) as
  select * from ops.model_answer_report(date_trunc('day', now(), 'UTC') - interval '30 days', now() + interval '1 second');
comment on view ops.model_answers is
  'The last 30 UTC days: answers per model and the share answered by fallbacks (AI_AGENT_MODEL_FALLBACKS). See ops.model_answer_report.';

create function ops.upstream_breaker_report(
  p_now timestamptz default now(),
  p_window interval default '24 hours',
  p_recent interval default '5 minutes'
)
returns table (
  upstream text,
  last_opened_at timestamptz,
  last_closed_at timestamptz,
  skipped_recently bigint,
  failed_recently bigint,
  answered_recently bigint,
  likely_state text
)
language sql
stable
set search_path = ''
as $$
  select
    a ->> 'upstream' as upstream,
    max(e.created_at) filter (where a ->> 'breaker' = 'opened') as last_opened_at,
    max(e.created_at) filter (where a ->> 'breaker' = 'closed') as last_closed_at,
    count(*) filter (where a ->> 'outcome' = 'skipped:breaker_open' and e.created_at > p_now - p_recent) as skipped_recently,
    count(*) filter (where a ->> 'outcome' like 'failed:%' and e.created_at > p_now - p_recent) as failed_recently,
    count(*) filter (where a ->> 'outcome' = 'answered' and e.created_at > p_now - p_recent) as answered_recently,
    case
      when count(*) filter (where a ->> 'outcome' = 'skipped:breaker_open' and e.created_at > p_now - p_recent) > 0
        then 'open (in some isolates)'
      when max(e.created_at) filter (where a ->> 'breaker' = 'opened')
           > coalesce(max(e.created_at) filter (where a ->> 'breaker' = 'closed'), '-infinity')
        then 'opened, not seen closed'
      else 'closed'
    end as likely_state
  from public.agent_usage_events e
  cross join lateral jsonb_array_elements(
    case when jsonb_typeof(e.metadata -> 'model_attempts') = 'array' then e.metadata -> 'model_attempts' else '[]'::jsonb end
  ) a
  where e.created_at > p_now - p_window
    and e.created_at <= p_now
  group by 1
  order by 1;
$$;
comment on function ops.upstream_breaker_report(timestamptz, interval, interval) is
  'Circuit breakers per upstream (model@host), as the usage rows of the last p_window saw them: when one last opened and closed (in any isolate), and attempts skipped, failed and answered within p_recent. Breakers live per isolate: "open (in some isolates)" means requests skipped it recently. Attempts are listed only on rows with a fallback, a skip, a retry or a transition, so answered_recently counts those.';

create view ops.upstream_breakers with (security_invoker = true) as
  select * from ops.upstream_breaker_report();
comment on view ops.upstream_breakers is
  'Circuit breakers per upstream over the last 24 hours, from the usage rows (every isolate): last opened/closed, attempts skipped, failed and answered in the last 5 minutes, likely state. See ops.upstream_breaker_report.';

-- ---------------------------------------------------------------------------
-- Privileges of every function and view above, one statement each (checked
-- by supabase/tests/database/004_privileges_inventory.test.sql): service_role
-- alone may execute or read them.
-- ---------------------------------------------------------------------------
revoke execute on function
  ops.priced_as(text, text, timestamptz),
  ops.price_as_requested(),
  ops.settle_usage_event(text, uuid, uuid, text, integer, integer, integer, integer, integer, timestamptz),
  ops.is_served_outcome(boolean, text),
  ops.is_billed(integer, integer, integer),
  ops.model_price(text, timestamptz),
  ops.event_cost_usd(text, timestamptz, integer, integer, integer),
  ops.worst_case_usd(text, bigint, timestamptz),
  public.agent_log_usage(jsonb),
  ops.settle_usage(),
  ops.rebuild_spend_counters(timestamptz),
  ops.usage_cells(timestamptz, timestamptz, uuid, interval, text),
  ops.usage_report(timestamptz, timestamptz, interval, uuid, boolean, boolean),
  ops.month_to_date_spend(timestamptz),
  ops.errors_by_code(timestamptz, timestamptz, uuid),
  ops.budget_status(timestamptz),
  ops.model_answer_report(timestamptz, timestamptz),
  ops.upstream_breaker_report(timestamptz, interval, interval)
from public, anon, authenticated;
grant execute on function
  ops.priced_as(text, text, timestamptz),
  ops.price_as_requested(),
  ops.settle_usage_event(text, uuid, uuid, text, integer, integer, integer, integer, integer, timestamptz),
  ops.is_served_outcome(boolean, text),
  ops.is_billed(integer, integer, integer),
  ops.model_price(text, timestamptz),
  ops.event_cost_usd(text, timestamptz, integer, integer, integer),
  ops.worst_case_usd(text, bigint, timestamptz),
  public.agent_log_usage(jsonb),
  ops.settle_usage(),
  ops.rebuild_spend_counters(timestamptz),
  ops.usage_cells(timestamptz, timestamptz, uuid, interval, text),
  ops.usage_report(timestamptz, timestamptz, interval, uuid, boolean, boolean),
  ops.month_to_date_spend(timestamptz),
  ops.errors_by_code(timestamptz, timestamptz, uuid),
  ops.budget_status(timestamptz),
  ops.model_answer_report(timestamptz, timestamptz),
  ops.upstream_breaker_report(timestamptz, interval, interval)
to service_role;
grant select on ops.health_15m, ops.monthly_cost, ops.model_answers, ops.upstream_breakers to service_role;
