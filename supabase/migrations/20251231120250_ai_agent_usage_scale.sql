-- agent-chat: the usage log at scale. Daily partitions of
-- public.agent_usage_events made ahead and dropped past retention, and the
-- rollup the dashboards read (ops.usage_cells, next migration, joins it to
-- the raw rows it does not hold yet).
--
-- Partitions: agent_usage_events_pYYYYMMDD holds one UTC day. pg_cron runs
-- ops.create_usage_partitions hourly (today and the next 7 days; a day made
-- twice is a no-op); a row whose day has no partition lands in
-- agent_usage_events_default, and is moved into its day when that day is
-- made. Retention drops whole days (ops.drop_usage_partitions_before).
--
-- Rollup: ops.usage_rollup holds, per minute and per UTC day (two grains),
-- org, model, channel and outcome, the sums every report needs and the exact
-- latency distribution of answered requests (each latency in ms and how many
-- rows had it). It holds every usage row whose id is at most
-- ops.usage_rollup_state.folded_through and no other; readers add the raw
-- rows above it (the tail), so a report is exactly the raw rows whenever it
-- is read, late rows included. Long periods read the day grain (a month is
-- 30 rows per org, model, channel and outcome however busy the org), the
-- minute grain fills the partial days at either end.
--
-- Lag-safe watermark: ids are handed out when a row is inserted, not when it
-- commits, so a row with a smaller id can become visible after a larger one.
-- ops.refresh_usage_rollups therefore folds in two steps: it notes the
-- largest id it sees and the transactions then in flight (pending_through,
-- pending_xids), and folds up to that id only once every one of those
-- transactions has ended; then no row at or below it can still appear.

-- ---------------------------------------------------------------------------
-- Partitions
-- ---------------------------------------------------------------------------
create function ops.create_usage_partition(p_day date)
returns boolean
language plpgsql
set search_path = ''
as $$
-- Rows of this day already in the default partition are copied into the new
-- table before it is attached (a plain insert: the settlement trigger is
-- cloned at attach, so nothing is settled twice); the default partition is
-- locked meanwhile so no row of the day slips in between.
declare
  v_name text := 'agent_usage_events_p' || to_char(p_day, 'YYYYMMDD');
  v_from timestamptz := p_day::timestamp at time zone 'UTC';
  v_to timestamptz := (p_day + 1)::timestamp at time zone 'UTC';
begin
  if p_day is null then
    return false;
  end if;
  -- One maker at a time (pg_cron and an operator may run it together).
  perform pg_advisory_xact_lock(hashtextextended('agent-chat:usage-partitions', 0));
  if to_regclass('public.' || v_name) is not null then
    return false;
  end if;
  lock table public.agent_usage_events_default in share row exclusive mode;
  if exists (select 1 from public.agent_usage_events_default d where d.created_at >= v_from and d.created_at < v_to) then
    execute format('create table public.%I (like public.agent_usage_events including defaults including constraints)', v_name);
    execute format('insert into public.%I select * from public.agent_usage_events_default d
                    where d.created_at >= $1 and d.created_at < $2', v_name) using v_from, v_to;
    delete from public.agent_usage_events_default d where d.created_at >= v_from and d.created_at < v_to;
    execute format('alter table public.agent_usage_events attach partition public.%I for values from (%L) to (%L)',
                   v_name, v_from, v_to);
  else
    execute format('create table public.%I partition of public.agent_usage_events for values from (%L) to (%L)',
                   v_name, v_from, v_to);
  end if;
  execute format('alter table public.%I enable row level security', v_name);
  execute format('revoke all on public.%I from public, anon, authenticated', v_name);
  execute format('comment on table public.%I is %L', v_name,
                 'Usage rows of ' || p_day || ' (UTC): a partition of public.agent_usage_events. Dropped whole by ops.drop_usage_partitions_before.');
  return true;
end;
$$;
comment on function ops.create_usage_partition(date) is
  'Creates the partition of public.agent_usage_events for one UTC day (moving that day''s rows out of the default partition); false when it exists.';
revoke execute on function ops.create_usage_partition(date) from public, anon, authenticated;
grant execute on function ops.create_usage_partition(date) to service_role;

create function ops.create_usage_partitions(
  p_now timestamptz default now(),
  p_days_ahead integer default 7,
  p_days_back integer default 1
)
returns integer
language sql
set search_path = ''
as $$
  select count(*) filter (where ops.create_usage_partition(d::date))::integer
  from generate_series((p_now at time zone 'UTC')::date - greatest(p_days_back, 0),
                       (p_now at time zone 'UTC')::date + greatest(p_days_ahead, 0), interval '1 day') as d;
$$;
comment on function ops.create_usage_partitions(timestamptz, integer, integer) is
  'Makes the daily partitions of public.agent_usage_events from p_days_back days before p_now to p_days_ahead after (UTC days); returns how many it created. pg_cron runs it hourly.';
revoke execute on function ops.create_usage_partitions(timestamptz, integer, integer) from public, anon, authenticated;
grant execute on function ops.create_usage_partitions(timestamptz, integer, integer) to service_role;

-- ---------------------------------------------------------------------------
-- Rollup
-- ---------------------------------------------------------------------------
create table ops.usage_rollup (
  grain interval not null check (grain in (interval '1 minute', interval '1 day')),
  bucket_start timestamptz not null,
  org_id uuid,
  model text,
  channel text,
  success boolean not null,
  error_code text,
  requests bigint not null,
  billed_requests bigint not null,
  prompt_tokens bigint not null,
  cached_prompt_tokens bigint not null,
  completion_tokens bigint not null,
  total_tokens bigint not null,
  usd numeric not null,
  unpriced_rows bigint not null,
  latency_values integer[],
  latency_counts bigint[],
  constraint usage_rollup_key unique nulls not distinct (grain, bucket_start, org_id, model, channel, success, error_code)
);
comment on table ops.usage_rollup is
  'Sums of public.agent_usage_events per minute and per UTC day (grain) by org, model, channel and outcome: every usage row whose id is at most ops.usage_rollup_state.folded_through, and only those, once in each grain. Read through ops.usage_cells, which adds the raw rows above it. Maintained by ops.refresh_usage_rollups (pg_cron, every minute).';
comment on column ops.usage_rollup.bucket_start is 'Start (UTC) of the minute or the day of the rows'' created_at.';
comment on column ops.usage_rollup.requests is 'sum(event_count) of the rows.';
comment on column ops.usage_rollup.billed_requests is 'sum(event_count) of the billed rows (ops.is_billed: the row reports tokens).';
comment on column ops.usage_rollup.prompt_tokens is
  'Sum of prompt_tokens (rows that are not billed report none, so this is also the billed rows'' sum); likewise completion_tokens and total_tokens.';
comment on column ops.usage_rollup.cached_prompt_tokens is 'Sum of cached_prompt_tokens of the billed rows.';
comment on column ops.usage_rollup.usd is 'Estimated cost at the prices of the fold (ops.event_cost_usd); after a retroactive price change run ops.rebuild_usage_rollups.';
comment on column ops.usage_rollup.unpriced_rows is 'Billed rows whose model had no price.';
comment on column ops.usage_rollup.latency_values is
  'Distinct latency_ms of the answered rows, ascending; latency_counts[i] rows had latency_values[i]. Exact percentiles, and as large as the distinct latencies, not the rows.';
alter table ops.usage_rollup enable row level security;
revoke all on ops.usage_rollup from public, anon, authenticated;
grant select on ops.usage_rollup to service_role;

create table ops.usage_rollup_state (
  id boolean primary key default true check (id),
  folded_through bigint not null default 0,
  pending_through bigint,
  pending_xids xid8[],
  refreshed_at timestamptz
);
comment on table ops.usage_rollup_state is
  'One row: the rollup holds every usage row with id <= folded_through. pending_through is the largest id seen at the last refresh and pending_xids the transactions then in flight; the next refresh after they have all ended folds up to pending_through.';
insert into ops.usage_rollup_state default values;
alter table ops.usage_rollup_state enable row level security;
revoke all on ops.usage_rollup_state from public, anon, authenticated;
grant select on ops.usage_rollup_state to service_role;

-- Adds the usage rows with p_after < id <= p_through and created_at >=
-- p_from to the rollup (merging into the minutes they belong to).
create function ops.fold_usage_rows(p_after bigint, p_through bigint, p_from timestamptz default '-infinity')
returns bigint
language plpgsql
set search_path = ''
as $$
declare
  v_rows bigint;
begin
  -- The rows grouped by minute (and latency) once, then into each grain.
  with m as (
    select date_bin(interval '1 minute', e.created_at, timestamptz '2000-01-01 00:00:00+00') as minute,
           e.org_id, e.model, e.channel, e.success, e.error_code,
           case when e.success then e.latency_ms end as latency,
           count(*) as n,
           sum(e.event_count) as requests,
           coalesce(sum(e.event_count) filter (where b.billed), 0) as billed_requests,
           coalesce(sum(e.prompt_tokens), 0) as prompt_tokens,
           coalesce(sum(e.cached_prompt_tokens) filter (where b.billed), 0) as cached_prompt_tokens,
           coalesce(sum(e.completion_tokens), 0) as completion_tokens,
           coalesce(sum(e.total_tokens), 0) as total_tokens,
           coalesce(sum(c.usd), 0) as usd,
           count(*) filter (where b.billed and c.usd is null) as unpriced_rows
    from public.agent_usage_events e
    cross join lateral (select ops.is_billed(e.prompt_tokens, e.completion_tokens, e.total_tokens) as billed) b
    cross join lateral (
      select ops.event_cost_usd(e.model, e.created_at, e.prompt_tokens, e.cached_prompt_tokens, e.completion_tokens) as usd
    ) c
    where e.id > p_after and e.id <= p_through and e.created_at >= p_from
    group by 1, 2, 3, 4, 5, 6, 7
  ),
  g as (
    select gr.grain, date_bin(gr.grain, m.minute, timestamptz '2000-01-01 00:00:00+00') as bucket_start,
           m.org_id, m.model, m.channel, m.success, m.error_code, m.latency,
           sum(m.n) as n, sum(m.requests) as requests, sum(m.billed_requests) as billed_requests,
           sum(m.prompt_tokens) as prompt_tokens, sum(m.cached_prompt_tokens) as cached_prompt_tokens,
           sum(m.completion_tokens) as completion_tokens, sum(m.total_tokens) as total_tokens,
           sum(m.usd) as usd, sum(m.unpriced_rows) as unpriced_rows
    from m cross join (values (interval '1 minute'), (interval '1 day')) as gr (grain)
    group by 1, 2, 3, 4, 5, 6, 7, 8
  )
  insert into ops.usage_rollup as r (
    grain, bucket_start, org_id, model, channel, success, error_code, requests, billed_requests, prompt_tokens,
    cached_prompt_tokens, completion_tokens, total_tokens, usd, unpriced_rows, latency_values, latency_counts)
  select g.grain, g.bucket_start, g.org_id, g.model, g.channel, g.success, g.error_code, sum(g.requests),
         sum(g.billed_requests), sum(g.prompt_tokens), sum(g.cached_prompt_tokens), sum(g.completion_tokens),
         sum(g.total_tokens), sum(g.usd), sum(g.unpriced_rows),
         array_agg(g.latency order by g.latency) filter (where g.latency is not null),
         array_agg(g.n order by g.latency) filter (where g.latency is not null)
  from g
  group by 1, 2, 3, 4, 5, 6, 7
  on conflict on constraint usage_rollup_key do update
  set requests = r.requests + excluded.requests,
      billed_requests = r.billed_requests + excluded.billed_requests,
      prompt_tokens = r.prompt_tokens + excluded.prompt_tokens,
      cached_prompt_tokens = r.cached_prompt_tokens + excluded.cached_prompt_tokens,
      completion_tokens = r.completion_tokens + excluded.completion_tokens,
      total_tokens = r.total_tokens + excluded.total_tokens,
      usd = r.usd + excluded.usd,
      unpriced_rows = r.unpriced_rows + excluded.unpriced_rows,
      (latency_values, latency_counts) = (
        select array_agg(m.v order by m.v), array_agg(m.n order by m.v)
        from (select u.v, sum(u.n)::bigint as n
              from unnest(r.latency_values || excluded.latency_values, r.latency_counts || excluded.latency_counts) as u (v, n)
              group by u.v) m);
  get diagnostics v_rows = row_count;
  return v_rows;
end;
$$;
comment on function ops.fold_usage_rows(bigint, bigint, timestamptz) is
  'Adds the usage rows with p_after < id <= p_through (and created_at >= p_from) to ops.usage_rollup, in both grains; returns the rollup rows written. Called by ops.refresh_usage_rollups and ops.rebuild_usage_rollups.';
revoke execute on function ops.fold_usage_rows(bigint, bigint, timestamptz) from public, anon, authenticated;

create function ops.refresh_usage_rollups()
returns jsonb
language plpgsql
set search_path = ''
as $$
-- Two passes per call: fold what the last call (or the first pass) saw once
-- its in-flight transactions have ended, then note what is visible now. A
-- call with nothing else in flight folds everything it sees.
declare
  v_state ops.usage_rollup_state;
  v_cells bigint := 0;
  v_pass integer;
begin
  -- One refresh at a time; a second caller waits and then finds less to do.
  select * into v_state from ops.usage_rollup_state s where s.id for update;
  for v_pass in 1 .. 2 loop
    if v_state.pending_through > v_state.folded_through
       and not exists (select 1 from unnest(v_state.pending_xids) x where pg_xact_status(x) = 'in progress') then
      v_cells := v_cells + ops.fold_usage_rows(v_state.folded_through, v_state.pending_through);
      v_state.folded_through := v_state.pending_through;
    end if;
    exit when v_pass = 2;
    -- The largest id visible now and the transactions in flight now (this
    -- one aside: its own rows are visible to it).
    select coalesce(max(e.id), v_state.folded_through) into v_state.pending_through
    from public.agent_usage_events e where e.id > v_state.folded_through;
    select coalesce(array_agg(x) filter (where x <> pg_current_xact_id()), '{}')
    into v_state.pending_xids
    from pg_snapshot_xip(pg_current_snapshot()) as x;
  end loop;
  update ops.usage_rollup_state s
  set folded_through = v_state.folded_through, pending_through = v_state.pending_through,
      pending_xids = v_state.pending_xids, refreshed_at = now()
  where s.id;
  return jsonb_build_object('folded_through', v_state.folded_through, 'pending_through', v_state.pending_through,
                            'rollup_rows_written', v_cells);
end;
$$;
comment on function ops.refresh_usage_rollups() is
  'Brings ops.usage_rollup up to date: folds every usage row no transaction can still add below the watermark (ops.usage_rollup_state). Run on demand (select ops.refresh_usage_rollups()) or by pg_cron every minute; reports are exact either way (they add the raw rows above the watermark).';
revoke execute on function ops.refresh_usage_rollups() from public, anon, authenticated;
grant execute on function ops.refresh_usage_rollups() to service_role;

create function ops.rebuild_usage_rollups(p_from timestamptz)
returns bigint
language plpgsql
set search_path = ''
as $$
declare
  -- Whole days: the day grain of p_from's day is rebuilt with it.
  v_from timestamptz := date_bin(interval '1 day', p_from, timestamptz '2000-01-01 00:00:00+00');
  v_state ops.usage_rollup_state;
begin
  select * into v_state from ops.usage_rollup_state s where s.id for update;
  delete from ops.usage_rollup r where r.bucket_start >= v_from;
  return ops.fold_usage_rows(0, v_state.folded_through, v_from);
end;
$$;
comment on function ops.rebuild_usage_rollups(timestamptz) is
  'Recomputes the rollup from p_from (rounded down to its UTC day) on from the raw rows (after a retroactive price change: the rollup keeps the prices of its fold); returns the rollup rows written.';
revoke execute on function ops.rebuild_usage_rollups(timestamptz) from public, anon, authenticated;
grant execute on function ops.rebuild_usage_rollups(timestamptz) to service_role;

-- ---------------------------------------------------------------------------
-- Retention
-- ---------------------------------------------------------------------------
create function ops.drop_usage_partitions_before(p_before timestamptz)
returns jsonb
language plpgsql
set search_path = ''
as $$
-- Whole days go with DROP TABLE (no dead rows, no vacuum); what is left
-- before the bound (the default partition, the day the bound falls in) is
-- deleted. The rollup loses the same minutes, so reports still equal the
-- raw rows.
declare
  v_before timestamptz := date_bin(interval '1 minute', p_before, timestamptz '2000-01-01 00:00:00+00');
  v_part record;
  v_dropped integer := 0;
  v_deleted integer;
begin
  if p_before is null then
    raise exception 'p_before is required' using errcode = '22023';
  end if;
  -- No refresh folds the rows being dropped meanwhile.
  perform 1 from ops.usage_rollup_state s where s.id for update;
  for v_part in
    select c.relname
    from pg_inherits i
    join pg_class c on c.oid = i.inhrelid
    where i.inhparent = 'public.agent_usage_events'::regclass
      and c.relname ~ '^agent_usage_events_p[0-9]{8}$'
      and (to_date(right(c.relname, 8), 'YYYYMMDD') + 1)::timestamp at time zone 'UTC' <= v_before
    order by c.relname
  loop
    execute format('alter table public.agent_usage_events detach partition public.%I', v_part.relname);
    execute format('drop table public.%I', v_part.relname);
    v_dropped := v_dropped + 1;
  end loop;
  delete from public.agent_usage_events e where e.created_at < v_before;
  get diagnostics v_deleted = row_count;
  -- The minutes before the bound, and the days that end at or before it
  -- (the day the bound falls in keeps its day row, less the rows deleted:
  -- rebuilt from what is left).
  delete from ops.usage_rollup r where r.grain = interval '1 minute' and r.bucket_start < v_before;
  delete from ops.usage_rollup r where r.grain = interval '1 day' and r.bucket_start + interval '1 day' <= v_before;
  if v_before > date_bin(interval '1 day', v_before, timestamptz '2000-01-01 00:00:00+00') then
    perform ops.rebuild_usage_rollups(v_before);
  end if;
  return jsonb_build_object('usage_partitions_dropped', v_dropped, 'usage_events_deleted', v_deleted);
end;
$$;
comment on function ops.drop_usage_partitions_before(timestamptz) is
  'Retention of the usage log: drops every daily partition that ends at or before p_before (rounded down to the minute), deletes the older rows left in other partitions, and the rollup of those minutes. Returns {usage_partitions_dropped, usage_events_deleted} (the rows of dropped partitions are not counted).';
revoke execute on function ops.drop_usage_partitions_before(timestamptz) from public, anon, authenticated;
grant execute on function ops.drop_usage_partitions_before(timestamptz) to service_role;

-- Today, yesterday and the next week exist from the start.
select ops.create_usage_partitions();

-- Schedules, only where pg_cron is enabled (Database → Extensions on hosted
-- Supabase; enable it, then re-run this block from the runbook).
do $$
begin
  if exists (select 1 from pg_extension where extname = 'pg_cron') then
    perform cron.schedule('agent-chat-usage-partitions', '7 * * * *', 'select ops.create_usage_partitions()');
    perform cron.schedule('agent-chat-usage-rollups', '* * * * *', 'select ops.refresh_usage_rollups()');
  end if;
end;
$$;
