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
-- Rollup: ops.usage_rollup holds the sums every report needs and the exact
-- latency distribution of answered requests (each latency in ms and how many
-- rows had it) at three levels: by org, model, channel and outcome ('cell',
-- per minute and per UTC day), by org and outcome ('org') and by outcome over
-- all orgs ('all'), both per minute, quarter hour, hour and UTC day. The
-- 'all' rows also keep their p50/p95/p99, computed when they are folded. It
-- holds every usage row whose id is at most
-- ops.usage_rollup_state.folded_through and no other, once in each level and
-- grain; readers add the raw rows above it (the tail), so a report is exactly
-- the raw rows whenever it is read, late rows included. A period is read as
-- its whole days, then whole hours, quarter hours and minutes at either end,
-- then the raw rows of the partial minutes, so what a dashboard reads depends
-- on its period and level, not on how many rows the period holds.
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
-- security definer: creating a partition takes the table's owner (pg_cron
-- runs it as the owner; an operator may call it as service_role).
security definer
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
                 'Usage rows of ' || p_day || ' (UTC): a partition of public.agent_usage_events, dropped whole when it passes the usage retention.');
  return true;
end;
$$;
comment on function ops.create_usage_partition(date) is
  'Creates the partition of public.agent_usage_events for one UTC day (moving that day''s rows out of the default partition); false when it exists.';

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

-- ---------------------------------------------------------------------------
-- Rollup
-- ---------------------------------------------------------------------------
-- The grains of each level, coarsest first (what the fold writes and
-- ops.usage_cells reads).
create function ops.usage_rollup_grains(p_level text)
returns interval[]
language sql
immutable
set search_path = ''
as $$
  select case p_level
           when 'cell' then array[interval '1 day', interval '1 minute']
           when 'org' then array[interval '1 day', interval '1 hour', interval '15 minutes', interval '1 minute']
           when 'all' then array[interval '1 day', interval '1 hour', interval '15 minutes', interval '1 minute']
         end;
$$;
comment on function ops.usage_rollup_grains(text) is
  'The grains ops.usage_rollup keeps for a level (cell, org, all), coarsest first.';

create table ops.usage_rollup (
  level text not null check (level in ('cell', 'org', 'all')),
  grain interval not null,
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
  latency_percentiles double precision[],
  constraint usage_rollup_grain check (grain = any (ops.usage_rollup_grains(level))),
  constraint usage_rollup_level check (
    (level = 'cell' or (model is null and channel is null)) and (level <> 'all' or org_id is null)),
  constraint usage_rollup_key unique nulls not distinct (level, grain, bucket_start, org_id, model, channel, success, error_code)
);
comment on table ops.usage_rollup is
  'Sums of public.agent_usage_events per minute, quarter hour, hour and UTC day (grain, as ops.usage_rollup_grains gives for each level) by org, model, channel and outcome (level cell), by org and outcome (org) and by outcome (all): every usage row whose id is at most ops.usage_rollup_state.folded_through, and only those, once in each level and grain. Read through ops.usage_cells, which adds the raw rows above it. Maintained by ops.refresh_usage_rollups (pg_cron, every minute).';
comment on column ops.usage_rollup.level is
  'cell: by org_id, model, channel and outcome; org: by org_id and outcome (model and channel NULL); all: by outcome over every org (org_id NULL too).';
comment on column ops.usage_rollup.bucket_start is 'Start (UTC, date_bin from 2000-01-01) of the minute, quarter hour, hour or day of the rows'' created_at.';
comment on column ops.usage_rollup.requests is 'sum(event_count) of the rows.';
comment on column ops.usage_rollup.billed_requests is 'sum(event_count) of the billed rows (ops.is_billed: the row reports tokens).';
comment on column ops.usage_rollup.prompt_tokens is
  'Sum of prompt_tokens (rows that are not billed report none, so this is also the billed rows'' sum); likewise completion_tokens and total_tokens.';
comment on column ops.usage_rollup.cached_prompt_tokens is 'Sum of cached_prompt_tokens of the billed rows.';
comment on column ops.usage_rollup.usd is 'Estimated cost of the billed rows at the prices of the fold (ops.event_cost_usd); after a retroactive price change run ops.rebuild_usage_rollups.';
comment on column ops.usage_rollup.unpriced_rows is 'Billed rows whose model had no price.';
comment on column ops.usage_rollup.latency_values is
  'Distinct latency_ms of the answered rows, ascending; latency_counts[i] rows had latency_values[i]. Exact percentiles, and as large as the distinct latencies, not the rows.';
comment on column ops.usage_rollup.latency_percentiles is
  'Level all: percentile_cont 0.50, 0.95 and 0.99 of latency_values/latency_counts (ops.latency_percentiles), kept up to date by the fold so a bucket read from this row alone needs no merge. NULL at the other levels.';
alter table ops.usage_rollup enable row level security;

create table ops.usage_rollup_state (
  id boolean primary key default true check (id),
  folded_through bigint not null default 0,
  folded_until timestamptz,
  pending_through bigint,
  pending_xids xid8[],
  refreshed_at timestamptz
);
comment on table ops.usage_rollup_state is
  'One row: the rollup holds every usage row with id <= folded_through, none created at or after folded_until (the largest created_at folded; NULL: none). pending_through is the largest id seen at the last refresh and pending_xids the transactions then in flight; the next refresh after they have all ended folds up to pending_through.';
insert into ops.usage_rollup_state default values;
alter table ops.usage_rollup_state enable row level security;

-- ---------------------------------------------------------------------------
-- Exact latency percentiles of a distribution kept as value/count arrays.
-- ---------------------------------------------------------------------------
create function ops.latency_percentiles(p_values integer[], p_counts bigint[])
returns double precision[]
language plpgsql
immutable
set search_path = ''
as $$
-- percentile_cont(0.50, 0.95, 0.99) of the rows the arrays stand for: the
-- values at 0-based ranks floor(p * (n - 1)) and ceil(p * (n - 1)),
-- interpolated in float8 as percentile_cont does, so they equal it on the raw
-- rows. p_values ascending and distinct; one pass over the arrays (copied
-- into locals so subscripts do not detoast them on every step).
declare
  v_values integer[] := p_values;
  v_counts bigint[] := p_counts;
  v_p double precision[] := array[0.50, 0.95, 0.99];
  v_h double precision[] := '{}';
  v_ranks bigint[] := '{}';
  v_at integer[] := array_fill(null::integer, array[6]);
  v_order integer[];
  v_total bigint := 0;
  v_seen bigint := 0;
  v_k integer := 1;
  i integer;
begin
  if v_values is null or cardinality(v_values) = 0 then
    return null;
  end if;
  for i in 1 .. cardinality(v_counts) loop
    v_total := v_total + v_counts[i];
  end loop;
  for i in 1 .. 3 loop
    v_h := v_h || v_p[i] * (v_total - 1);
    v_ranks := v_ranks || floor(v_h[i])::bigint || ceil(v_h[i])::bigint;
  end loop;
  -- The six ranks in ascending order (p95's upper rank may pass p99's lower
  -- one); each takes the first value whose running count passes it.
  select array_agg(t.k order by t.rank, t.k) into v_order from unnest(v_ranks) with ordinality as t (rank, k);
  for i in 1 .. cardinality(v_values) loop
    v_seen := v_seen + v_counts[i];
    while v_k <= 6 and v_seen > v_ranks[v_order[v_k]] loop
      v_at[v_order[v_k]] := v_values[i];
      v_k := v_k + 1;
    end loop;
    exit when v_k > 6;
  end loop;
  return array[v_at[1] + (v_at[2] - v_at[1]) * (v_h[1] - v_ranks[1]),
               v_at[3] + (v_at[4] - v_at[3]) * (v_h[2] - v_ranks[3]),
               v_at[5] + (v_at[6] - v_at[5]) * (v_h[3] - v_ranks[5])];
end;
$$;
comment on function ops.latency_percentiles(integer[], bigint[]) is
  'p50, p95 and p99 (percentile_cont) of a latency distribution given as ascending distinct values and their counts; NULL when empty.';

-- ---------------------------------------------------------------------------
-- Privileges of every table and function above (checked by
-- supabase/tests/database/004_privileges_inventory.test.sql): service_role
-- alone may read or execute them.
-- ---------------------------------------------------------------------------
revoke all on table ops.usage_rollup, ops.usage_rollup_state from public, anon, authenticated;
grant select on table ops.usage_rollup, ops.usage_rollup_state to service_role;
revoke execute on function
  ops.create_usage_partition(date),
  ops.create_usage_partitions(timestamptz, integer, integer),
  ops.usage_rollup_grains(text),
  ops.latency_percentiles(integer[], bigint[])
from public, anon, authenticated;
grant execute on function
  ops.create_usage_partition(date),
  ops.create_usage_partitions(timestamptz, integer, integer),
  ops.usage_rollup_grains(text),
  ops.latency_percentiles(integer[], bigint[])
to service_role;

-- Today, yesterday and the next week exist from the start.
select ops.create_usage_partitions();

