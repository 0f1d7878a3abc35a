-- agent-chat: prices, budgets, cost and health views, operator functions.

-- ---------------------------------------------------------------------------
-- Prices
-- ---------------------------------------------------------------------------
create table ops.model_prices (
  model text not null,
  effective_from timestamptz not null default '2000-01-01 00:00:00+00',
  input_usd_per_million numeric(12, 6) not null check (input_usd_per_million >= 0),
  cached_input_usd_per_million numeric(12, 6) not null check (cached_input_usd_per_million >= 0),
  output_usd_per_million numeric(12, 6) not null check (output_usd_per_million >= 0),
  note text,
  created_at timestamptz not null default now(),
  primary key (model, effective_from)
);
comment on table ops.model_prices is
  'USD per million tokens by model, effective from a date. A usage event is priced with the newest row whose effective_from <= its created_at and whose model equals the event''s model or is its prefix before a dated suffix (gpt-4.1-mini matches gpt-4.1-mini-2025-04-14). Edit to match your contract: insert a new row with a later effective_from rather than updating history.';
comment on column ops.model_prices.cached_input_usd_per_million is 'Price of prompt tokens served from OpenAI''s prompt cache.';
alter table ops.model_prices enable row level security;
revoke all on ops.model_prices from public, anon, authenticated;
grant select, insert, update, delete on ops.model_prices to service_role;

insert into ops.model_prices (model, input_usd_per_million, cached_input_usd_per_million, output_usd_per_million, note)
values ('gpt-4.1-mini', 0.30, 0.30, 1.20,
        'ASSUMPTION from the operations guide ($0.30 in / $1.20 out per 1M tokens); cached input priced as input until you set your contract price. Edit me.');

-- Price of one event, or NULL when no price row matches its model.
create function ops.event_cost_usd(
  p_model text,
  p_created_at timestamptz,
  p_prompt_tokens integer,
  p_cached_prompt_tokens integer,
  p_completion_tokens integer
)
returns numeric
language sql
stable
set search_path = ''
as $$
  select (
      greatest(coalesce(p_prompt_tokens, 0) - coalesce(p_cached_prompt_tokens, 0), 0) * p.input_usd_per_million
    + coalesce(p_cached_prompt_tokens, 0) * p.cached_input_usd_per_million
    + coalesce(p_completion_tokens, 0) * p.output_usd_per_million
  ) / 1000000
  from ops.model_prices p
  where (p.model = p_model or starts_with(p_model, p.model || '-'))
    and p.effective_from <= p_created_at
  order by length(p.model) desc, p.effective_from desc
  limit 1;
$$;
comment on function ops.event_cost_usd(text, timestamptz, integer, integer, integer) is
  'Estimated USD cost of one usage event from ops.model_prices; NULL when the model has no price.';

-- ---------------------------------------------------------------------------
-- Budgets
-- ---------------------------------------------------------------------------
create table ops.budgets (
  id bigint generated always as identity primary key,
  org_id uuid,
  monthly_usd numeric(12, 2) not null check (monthly_usd > 0),
  note text,
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now()
);
comment on table ops.budgets is
  'Monthly spend budgets in USD: org_id NULL is the global budget, otherwise one org''s. Month-to-date estimated spend above a budget raises a budget alert.';
create unique index budgets_one_per_org_idx
  on ops.budgets ((coalesce(org_id, '00000000-0000-0000-0000-000000000000'::uuid)));
alter table ops.budgets enable row level security;
revoke all on ops.budgets from public, anon, authenticated;
grant select, insert, update, delete on ops.budgets to service_role;

-- ---------------------------------------------------------------------------
-- Outcomes: which error codes are the service's fault.
-- ---------------------------------------------------------------------------
create function ops.is_served_outcome(p_success boolean, p_error_code text)
returns boolean
language sql
immutable
set search_path = ''
as $$
  select p_success or coalesce(p_error_code, 'internal_error') in ('openai_error', 'session_store_error', 'internal_error');
$$;
comment on function ops.is_served_outcome(boolean, text) is
  'True for requests the service tried to answer (success, openai_error, session_store_error, internal_error). Refusals caused by the client (rate_limit, opt_out, invalid_request, unauthorized, forbidden, session_not_found) do not count against the success rate.';

-- ---------------------------------------------------------------------------
-- Usage report: the one query behind the health view, the CLI and the HTML
-- report.
-- ---------------------------------------------------------------------------
create function ops.usage_report(
  p_from timestamptz,
  p_to timestamptz,
  p_bucket interval default '15 minutes',
  p_org_id uuid default null,
  p_by_org boolean default false
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
as $$
  select
    date_bin(p_bucket, e.created_at, timestamptz '2000-01-01 00:00:00+00') as bucket_start,
    case when p_by_org then e.org_id end as org_id,
    count(*) as requests,
    count(*) filter (where ops.is_served_outcome(e.success, e.error_code)) as served,
    count(*) filter (where e.success) as succeeded,
    count(*) filter (where not ops.is_served_outcome(e.success, e.error_code)) as refused,
    round(
      count(*) filter (where e.success)::numeric
        / nullif(count(*) filter (where ops.is_served_outcome(e.success, e.error_code)), 0),
      4
    ) as success_rate,
    round((percentile_cont(0.50) within group (order by e.latency_ms) filter (where e.success))::numeric, 1),
    round((percentile_cont(0.95) within group (order by e.latency_ms) filter (where e.success))::numeric, 1),
    round((percentile_cont(0.99) within group (order by e.latency_ms) filter (where e.success))::numeric, 1),
    coalesce(sum(e.prompt_tokens), 0)::bigint,
    coalesce(sum(e.completion_tokens), 0)::bigint,
    coalesce(sum(e.total_tokens), 0)::bigint,
    round(coalesce(sum(c.usd), 0), 6) as estimated_usd,
    count(*) filter (where c.usd is null and coalesce(e.total_tokens, 0) > 0) as unpriced_events
  from public.agent_usage_events e
  cross join lateral (
    select ops.event_cost_usd(e.model, e.created_at, e.prompt_tokens, e.cached_prompt_tokens, e.completion_tokens) as usd
  ) c
  where e.created_at >= p_from
    and e.created_at < p_to
    and (p_org_id is null or e.org_id = p_org_id)
  group by 1, 2
  order by 1, 2;
$$;
comment on function ops.usage_report(timestamptz, timestamptz, interval, uuid, boolean) is
  'Requests, success rate (answered / served), latency percentiles of answered requests, tokens and estimated cost per time bucket, optionally for one org or per org.';

create view ops.health_15m with (security_invoker = true) as
  select * from ops.usage_report(now() - interval '24 hours', now() + interval '1 second', interval '15 minutes');
comment on view ops.health_15m is
  'The last 24 hours in 15-minute buckets: requests, success rate, p50/p95/p99 latency, tokens, estimated cost.';

create view ops.monthly_cost with (security_invoker = true) as
  select
    date_trunc('month', e.created_at) as month,
    e.org_id,
    e.model,
    count(*) as requests,
    coalesce(sum(e.prompt_tokens), 0)::bigint as prompt_tokens,
    coalesce(sum(e.cached_prompt_tokens), 0)::bigint as cached_prompt_tokens,
    coalesce(sum(e.completion_tokens), 0)::bigint as completion_tokens,
    round(coalesce(sum(ops.event_cost_usd(e.model, e.created_at, e.prompt_tokens, e.cached_prompt_tokens, e.completion_tokens)), 0), 6) as estimated_usd,
    count(*) filter (
      where ops.event_cost_usd(e.model, e.created_at, e.prompt_tokens, e.cached_prompt_tokens, e.completion_tokens) is null
    ) as unpriced_events
  from public.agent_usage_events e
  where e.success is true
  group by 1, 2, 3;
comment on view ops.monthly_cost is
  'Estimated monthly cost of successful requests by org and model, priced from ops.model_prices. unpriced_events > 0 means a model has no price row.';

-- Month-to-date spend per org (org_id) and in total (org_id NULL).
create function ops.month_to_date_spend(p_now timestamptz default now())
returns table (org_id uuid, estimated_usd numeric)
language sql
stable
set search_path = ''
as $$
  select e.org_id,
         round(coalesce(sum(ops.event_cost_usd(e.model, e.created_at, e.prompt_tokens, e.cached_prompt_tokens, e.completion_tokens)), 0), 6)
  from public.agent_usage_events e
  where e.success is true
    and e.created_at >= date_trunc('month', p_now)
    and e.created_at <= p_now
  group by grouping sets ((e.org_id), ());
$$;
comment on function ops.month_to_date_spend(timestamptz) is
  'Estimated spend of successful requests since the start of p_now''s month (UTC): one row per org and one with org_id NULL for the total.';

-- ---------------------------------------------------------------------------
-- Alert conditions, evaluated live.
-- ---------------------------------------------------------------------------
create function ops.evaluate_alerts(
  p_now timestamptz default now(),
  p_min_requests integer default 10,
  p_success_threshold numeric default 0.98
)
returns table (
  kind text,
  subject text,
  window_start timestamptz,
  window_end timestamptz,
  observed numeric,
  threshold numeric,
  details jsonb
)
language sql
stable
set search_path = ''
as $$
  -- Success rate over the trailing 15 minutes (evaluated every minute by
  -- the scheduled check, this covers any 15-minute window to the minute).
  select 'success_rate', 'global', p_now - interval '15 minutes', p_now,
         round(w.succeeded::numeric / w.served, 4), p_success_threshold,
         jsonb_build_object('served', w.served, 'succeeded', w.succeeded, 'failures_by_code', w.codes)
  from (
    select
      count(*) filter (where ops.is_served_outcome(e.success, e.error_code)) as served,
      count(*) filter (where e.success) as succeeded,
      (select coalesce(jsonb_object_agg(x.code, x.n), '{}'::jsonb)
       from (select e2.error_code as code, count(*) as n
             from public.agent_usage_events e2
             where e2.created_at > p_now - interval '15 minutes' and e2.created_at <= p_now
               and not e2.success and ops.is_served_outcome(e2.success, e2.error_code)
             group by 1) x) as codes
    from public.agent_usage_events e
    where e.created_at > p_now - interval '15 minutes' and e.created_at <= p_now
  ) w
  where w.served >= p_min_requests and w.succeeded::numeric / w.served < p_success_threshold
  union all
  select 'budget',
         case when b.org_id is null then 'global' else 'org:' || b.org_id end,
         date_trunc('month', p_now), p_now,
         s.estimated_usd, b.monthly_usd,
         jsonb_build_object('org_id', b.org_id, 'budget_usd', b.monthly_usd, 'spent_usd', s.estimated_usd)
  from ops.budgets b
  join ops.month_to_date_spend(p_now) s on s.org_id is not distinct from b.org_id
  where s.estimated_usd > b.monthly_usd;
$$;
comment on function ops.evaluate_alerts(timestamptz, integer, numeric) is
  'Alert conditions true at p_now: success rate below 98% over the trailing 15 minutes (with at least p_min_requests served), and month-to-date estimated spend over a global or per-org budget.';

create view ops.active_alerts with (security_invoker = true) as
  select * from ops.evaluate_alerts();
comment on view ops.active_alerts is 'Alert conditions true right now (see ops.evaluate_alerts).';

-- ---------------------------------------------------------------------------
-- Rate-limit inspection
-- ---------------------------------------------------------------------------
create view ops.rate_limit_status with (security_invoker = true) as
  select
    r.bucket_key,
    r.scope,
    r.max_requests,
    r.window_seconds,
    u.used,
    greatest(r.max_requests - u.used, 0) as remaining,
    u.next_slot_frees_at,
    u.empty_at,
    r.updated_at
  from ops.rate_limits r
  cross join lateral (
    select
      coalesce(sum(s.n), 0)::integer as used,
      to_timestamp(((min(s.id) + 1) * r.slot_ms + r.window_seconds::bigint * 1000) / 1000.0) as next_slot_frees_at,
      to_timestamp(((max(s.id) + 1) * r.slot_ms + r.window_seconds::bigint * 1000) / 1000.0) as empty_at
    from unnest(r.slot_ids, r.slot_counts) as s (id, n)
    where s.id >= floor((extract(epoch from now()) * 1000 - r.window_seconds::bigint * 1000) / r.slot_ms)
  ) u;
comment on view ops.rate_limit_status is
  'Each bucket now: used and remaining in its window, when the oldest counted slot frees up (next_slot_frees_at) and when the bucket is empty (empty_at).';

-- ---------------------------------------------------------------------------
-- Operator functions
-- ---------------------------------------------------------------------------
create function ops.clear_rate_limit(p_bucket_key text)
returns integer
language plpgsql
set search_path = ''
as $$
declare
  v_deleted integer;
begin
  if p_bucket_key is null or p_bucket_key !~ '^(org|user|ip):.+' then
    raise exception 'bucket key must look like org:<id>, user:<id> or ip:<address>, got %', coalesce(p_bucket_key, 'NULL')
      using errcode = '22023';
  end if;
  delete from ops.rate_limits r where r.bucket_key = p_bucket_key;
  get diagnostics v_deleted = row_count;
  return v_deleted;
end;
$$;
comment on function ops.clear_rate_limit(text) is
  'Empties one rate-limit bucket (deletes its row); returns 1 if it existed, 0 otherwise.';

create function ops.add_opt_out(
  p_org_id uuid,
  p_user_id uuid default null,
  p_channel text default null,
  p_reason text default null,
  p_created_by text default null,
  p_expires_at timestamptz default null
)
returns public.agent_opt_outs
language plpgsql
set search_path = ''
as $$
declare
  v_row public.agent_opt_outs;
begin
  if p_org_id is null then
    raise exception 'org_id is required' using errcode = '22023';
  end if;
  if p_channel is not null and p_channel !~ '^[a-z][a-z0-9_-]{0,31}$' then
    raise exception 'channel must be a short lowercase token, got %', p_channel using errcode = '22023';
  end if;
  insert into public.agent_opt_outs (org_id, user_id, channel, reason, created_by, expires_at)
  values (p_org_id, p_user_id, p_channel, p_reason, coalesce(p_created_by, session_user::text), p_expires_at)
  returning * into v_row;
  return v_row;
end;
$$;
comment on function ops.add_opt_out(uuid, uuid, text, text, text, timestamptz) is
  'Registers an opt-out: user NULL = whole org, channel NULL = every channel, expires_at NULL = until expired.';

create function ops.expire_opt_out(
  p_id uuid,
  p_expired_by text default null,
  p_now timestamptz default now()
)
returns public.agent_opt_outs
language plpgsql
set search_path = ''
as $$
declare
  v_row public.agent_opt_outs;
begin
  update public.agent_opt_outs o
  set expires_at = p_now,
      expired_by = coalesce(p_expired_by, session_user::text)
  where o.id = p_id and (o.expires_at is null or o.expires_at > p_now)
  returning * into v_row;
  if not found then
    select o.* into v_row from public.agent_opt_outs o where o.id = p_id;
    if not found then
      raise exception 'no opt-out with id %', p_id using errcode = 'P0002';
    end if;
  end if;
  return v_row;
end;
$$;
comment on function ops.expire_opt_out(uuid, text, timestamptz) is
  'Ends an opt-out now (keeps the row for audit). Expiring an already expired opt-out changes nothing.';

create function ops.session_show(p_session_id uuid, p_now timestamptz default now())
returns jsonb
language sql
stable
set search_path = ''
as $$
  select jsonb_build_object(
    'id', s.id, 'org_id', s.org_id, 'user_id', s.user_id, 'channel', s.channel,
    'created_at', s.created_at, 'updated_at', s.updated_at, 'expires_at', s.expires_at,
    'expired', s.expires_at <= p_now,
    'messages', coalesce((
      select jsonb_agg(jsonb_build_object('role', m.role, 'content', m.content, 'created_at', m.created_at) order by m.id)
      from public.agent_session_messages m where m.session_id = s.id
    ), '[]'::jsonb)
  )
  from public.agent_sessions s
  where s.id = p_session_id;
$$;
comment on function ops.session_show(uuid, timestamptz) is 'One stored session with its messages, for support; NULL when unknown.';

create function ops.purge_expired(
  p_now timestamptz default now(),
  p_usage_retention interval default null
)
returns jsonb
language plpgsql
set search_path = ''
as $$
declare
  v_messages integer;
  v_buckets integer;
  v_usage integer := 0;
begin
  -- Messages of expired sessions go; the session row stays so its id
  -- keeps belonging to its owner.
  delete from public.agent_session_messages m
  using public.agent_sessions s
  where m.session_id = s.id and s.expires_at <= p_now;
  get diagnostics v_messages = row_count;

  -- Buckets whose every admission has left the window hold nothing.
  delete from ops.rate_limits r
  where r.updated_at < p_now - make_interval(secs => r.window_seconds + r.slot_ms / 1000.0);
  get diagnostics v_buckets = row_count;

  if p_usage_retention is not null then
    delete from public.agent_usage_events e where e.created_at < p_now - p_usage_retention;
    get diagnostics v_usage = row_count;
  end if;

  return jsonb_build_object('messages_deleted', v_messages, 'buckets_deleted', v_buckets, 'usage_events_deleted', v_usage);
end;
$$;
comment on function ops.purge_expired(timestamptz, interval) is
  'Deletes the messages of expired sessions, rate-limit rows that hold no admission, and (when p_usage_retention is given) older usage events. Scheduled nightly with pg_cron when present.';

-- Deny by default, then grant each function to service_role.
revoke execute on all functions in schema ops from public, anon, authenticated;
grant execute on all functions in schema ops to service_role;
grant select on ops.health_15m, ops.monthly_cost, ops.active_alerts, ops.rate_limit_status to service_role;
