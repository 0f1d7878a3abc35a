-- agent-chat: listing for the operator CLI and the runbook.

create function ops.list_opt_outs(
  p_org_id uuid default null,
  p_include_expired boolean default false,
  p_now timestamptz default now()
)
returns table (
  id uuid,
  org_id uuid,
  user_id uuid,
  channel text,
  reason text,
  created_by text,
  created_at timestamptz,
  expires_at timestamptz,
  expired_by text,
  active boolean
)
language sql
stable
set search_path = ''
as $$
  select o.id, o.org_id, o.user_id, o.channel, o.reason, o.created_by, o.created_at, o.expires_at, o.expired_by,
         (o.expires_at is null or o.expires_at > p_now) as active
  from public.agent_opt_outs o
  where (p_org_id is null or o.org_id = p_org_id)
    and (p_include_expired or o.expires_at is null or o.expires_at > p_now)
  order by o.created_at desc;
$$;
comment on function ops.list_opt_outs(uuid, boolean, timestamptz) is
  'Opt-outs, newest first: the active ones, or all of them (the audit trail) with p_include_expired. user_id NULL = whole org, channel NULL = every channel.';

create function ops.bucket_status(p_bucket_key text)
returns table (
  bucket_key text,
  scope text,
  max_requests integer,
  window_seconds integer,
  used integer,
  remaining integer,
  next_slot_frees_at timestamptz,
  empty_at timestamptz,
  updated_at timestamptz
)
language sql
stable
set search_path = ''
as $$
  select s.bucket_key, s.scope, s.max_requests, s.window_seconds, s.used, s.remaining,
         s.next_slot_frees_at, s.empty_at, s.updated_at
  from ops.rate_limit_status s
  where s.bucket_key = p_bucket_key
     or (right(p_bucket_key, 1) = '*' and starts_with(s.bucket_key, left(p_bucket_key, -1)))
  order by s.bucket_key;
$$;
comment on function ops.bucket_status(text) is
  'One rate-limit bucket as ops.rate_limit_status shows it (used, remaining, when it frees up); a trailing * lists every bucket with that prefix, e.g. ''org:*''.';

revoke execute on function ops.list_opt_outs(uuid, boolean, timestamptz) from public, anon, authenticated;
revoke execute on function ops.bucket_status(text) from public, anon, authenticated;
grant execute on function ops.list_opt_outs(uuid, boolean, timestamptz) to service_role;
grant execute on function ops.bucket_status(text) to service_role;

-- Buckets of the usage report start at p_from, so a one-bucket report over
-- any period is one row (before, they were aligned to 2000-01-01).
create or replace function ops.usage_report(
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
    date_bin(p_bucket, e.created_at, p_from) as bucket_start,
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
  'Requests, success rate (answered / served), latency percentiles of answered requests, tokens and estimated cost per time bucket (buckets start at p_from), optionally for one org or per org.';
