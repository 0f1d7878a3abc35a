-- agent-chat: the usage rollup's fold and refresh (its tables are in
-- 20251231120250_ai_agent_usage_scale, which describes the watermark), and
-- usage retention by whole daily partitions. Here because the fold prices
-- rows with ops.event_cost_usd (20251231120300_ai_agent_usage_costs).

-- Adds the usage rows with p_after < id <= p_through and created_at >=
-- p_from to the rollup (merging into the buckets they belong to, at every
-- level and grain), then recomputes the percentiles of the 'all' rows it
-- touched.
create function ops.fold_usage_rows(p_after bigint, p_through bigint, p_from timestamptz default '-infinity')
returns bigint
language plpgsql
set search_path = ''
as $$
declare
  v_rows bigint;
  v_grains interval[];
  v_starts timestamptz[];
begin
  -- The rows grouped by minute (and latency) once, then into each level and grain.
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
           coalesce(sum(c.usd) filter (where b.billed), 0) as usd,
           count(*) filter (where b.billed and c.usd is null) as unpriced_rows
    from public.agent_usage_events e
    cross join lateral (select ops.is_billed(e.prompt_tokens, e.completion_tokens, e.total_tokens) as billed) b
    cross join lateral (
      select ops.event_cost_usd(coalesce(e.metadata ->> 'priced_as', e.model), e.created_at, e.prompt_tokens, e.cached_prompt_tokens, e.completion_tokens) as usd
    ) c
    where e.id > p_after and e.id <= p_through and e.created_at >= p_from
    group by 1, 2, 3, 4, 5, 6, 7
  ),
  g as (
    select l.level, gr.grain, date_bin(gr.grain, m.minute, timestamptz '2000-01-01 00:00:00+00') as bucket_start,
           case when l.level <> 'all' then m.org_id end as org_id,
           case when l.level = 'cell' then m.model end as model,
           case when l.level = 'cell' then m.channel end as channel,
           m.success, m.error_code, m.latency,
           sum(m.n) as n, sum(m.requests) as requests, sum(m.billed_requests) as billed_requests,
           sum(m.prompt_tokens) as prompt_tokens, sum(m.cached_prompt_tokens) as cached_prompt_tokens,
           sum(m.completion_tokens) as completion_tokens, sum(m.total_tokens) as total_tokens,
           sum(m.usd) as usd, sum(m.unpriced_rows) as unpriced_rows
    from m
    cross join (values ('cell'), ('org'), ('all')) as l (level)
    cross join lateral unnest(ops.usage_rollup_grains(l.level)) as gr (grain)
    group by 1, 2, 3, 4, 5, 6, 7, 8, 9
  ),
  written as (
    insert into ops.usage_rollup as r (
      level, grain, bucket_start, org_id, model, channel, success, error_code, requests, billed_requests, prompt_tokens,
      cached_prompt_tokens, completion_tokens, total_tokens, usd, unpriced_rows, latency_values, latency_counts)
    select g.level, g.grain, g.bucket_start, g.org_id, g.model, g.channel, g.success, g.error_code, sum(g.requests),
           sum(g.billed_requests), sum(g.prompt_tokens), sum(g.cached_prompt_tokens), sum(g.completion_tokens),
           sum(g.total_tokens), sum(g.usd), sum(g.unpriced_rows),
           array_agg(g.latency order by g.latency) filter (where g.latency is not null),
           array_agg(g.n order by g.latency) filter (where g.latency is not null)
    from g
    group by 1, 2, 3, 4, 5, 6, 7, 8
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
                group by u.v) m)
    returning r.level, r.grain, r.bucket_start, r.latency_values is not null as answered
  )
  select count(*), array_agg(w.grain) filter (where w.level = 'all' and w.answered),
         array_agg(w.bucket_start) filter (where w.level = 'all' and w.answered)
  into v_rows, v_grains, v_starts
  from written w;
  -- The merged distributions are only visible to a second statement.
  update ops.usage_rollup r
  set latency_percentiles = ops.latency_percentiles(r.latency_values, r.latency_counts)
  from (select distinct t.grain, t.bucket_start from unnest(v_grains, v_starts) as t (grain, bucket_start)) t
  where r.level = 'all' and r.grain = t.grain and r.bucket_start = t.bucket_start and r.latency_values is not null;
  return v_rows;
end;
$$;
comment on function ops.fold_usage_rows(bigint, bigint, timestamptz) is
  'Adds the usage rows with p_after < id <= p_through (and created_at >= p_from) to ops.usage_rollup, at every level and grain, and recomputes the latency percentiles of the all rows it touched; returns the rollup rows written. Called by ops.refresh_usage_rollups and ops.rebuild_usage_rollups.';

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
      select greatest(v_state.folded_until, max(e.created_at)) into v_state.folded_until
      from public.agent_usage_events e
      where e.id > v_state.folded_through and e.id <= v_state.pending_through;
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
  set folded_through = v_state.folded_through, folded_until = v_state.folded_until,
      pending_through = v_state.pending_through,
      pending_xids = v_state.pending_xids, refreshed_at = now()
  where s.id;
  return jsonb_build_object('folded_through', v_state.folded_through, 'pending_through', v_state.pending_through,
                            'rollup_rows_written', v_cells);
end;
$$;
comment on function ops.refresh_usage_rollups() is
  'Brings ops.usage_rollup up to date: folds every usage row no transaction can still add below the watermark (ops.usage_rollup_state). Run on demand (select ops.refresh_usage_rollups()) or by pg_cron every minute; reports are exact either way (they add the raw rows above the watermark).';

create function ops.rebuild_usage_rollups(p_from timestamptz)
returns bigint
language plpgsql
set search_path = ''
as $$
declare
  -- Whole days: every bucket of p_from's day (none is longer) is rebuilt with it.
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

-- ---------------------------------------------------------------------------
-- Retention
-- ---------------------------------------------------------------------------
create function ops.drop_usage_partitions_before(p_before timestamptz)
returns jsonb
language plpgsql
-- security definer: dropping a partition takes the table's owner, and the
-- purge runs as service_role too.
security definer
set search_path = ''
as $$
-- Whole days only (the bound is rounded down to a UTC day), so the rollup's
-- buckets (none longer than a day) before the bound go with them and the reports still
-- equal the raw rows. A day goes with DROP TABLE (no dead rows, no vacuum);
-- older rows in the default partition are deleted.
declare
  v_before timestamptz := date_bin(interval '1 day', p_before, timestamptz '2000-01-01 00:00:00+00');
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
    from pg_catalog.pg_inherits i
    join pg_catalog.pg_class c on c.oid = i.inhrelid
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
  delete from ops.usage_rollup r where r.bucket_start < v_before;
  return jsonb_build_object('usage_partitions_dropped', v_dropped, 'usage_events_deleted', v_deleted);
end;
$$;
comment on function ops.drop_usage_partitions_before(timestamptz) is
  'Retention of the usage log by whole UTC days: drops every daily partition that ends at or before p_before rounded down to its day, deletes older rows of the default partition, and the rollup of those days. Returns {usage_partitions_dropped, usage_events_deleted} (rows of dropped partitions are not counted). Called by ops.purge_expired.';

-- ---------------------------------------------------------------------------
-- Privileges of every function above, one statement each (checked by
-- supabase/tests/database/004_privileges_inventory.test.sql): service_role
-- alone may execute them.
-- ---------------------------------------------------------------------------
revoke execute on function
  ops.fold_usage_rows(bigint, bigint, timestamptz),
  ops.refresh_usage_rollups(),
  ops.rebuild_usage_rollups(timestamptz),
  ops.drop_usage_partitions_before(timestamptz)
from public, anon, authenticated;
grant execute on function
  ops.fold_usage_rows(bigint, bigint, timestamptz),
  ops.refresh_usage_rollups(),
  ops.rebuild_usage_rollups(timestamptz),
  ops.drop_usage_partitions_before(timestamptz)
to service_role;

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
