-- The reports, views and alert conditions read the rollup (each level and
-- grain: cell, org and all rows per minute, quarter hour, hour and day, and
-- the all rows' kept percentiles) plus the raw rows it does not hold
-- (ops.usage_cells), and equal the raw rows exactly: before a refresh, after
-- it, with late (back-dated) rows on both sides of the watermark and a row
-- dated after now, for whole buckets and for partial ones.
begin;
\ir ../support/pgtap-helpers.psql
select plan(27);

-- setup: the reports as they read the raw rows (the reference)
create function pg_temp.raw_report(p_from timestamptz, p_to timestamptz, p_bucket interval, p_org uuid, p_by_org boolean)
returns table (b timestamptz, o uuid, requests bigint, served bigint, succeeded bigint, refused bigint, rate numeric,
               p50 numeric, p95 numeric, p99 numeric, pt bigint, ct bigint, tt bigint, usd numeric, unpriced bigint)
language sql as $$
  select case when p_bucket is null then p_from else date_bin(p_bucket, e.created_at, timestamptz '2000-01-01') end,
         case when p_by_org then e.org_id end,
         sum(e.event_count)::bigint,
         coalesce(sum(e.event_count) filter (where ops.is_served_outcome(e.success, e.error_code)), 0)::bigint,
         coalesce(sum(e.event_count) filter (where e.success), 0)::bigint,
         coalesce(sum(e.event_count) filter (where not ops.is_served_outcome(e.success, e.error_code)), 0)::bigint,
         round(coalesce(sum(e.event_count) filter (where e.success), 0)::numeric
               / nullif(sum(e.event_count) filter (where ops.is_served_outcome(e.success, e.error_code)), 0), 4),
         round((percentile_cont(0.50) within group (order by e.latency_ms) filter (where e.success))::numeric, 1),
         round((percentile_cont(0.95) within group (order by e.latency_ms) filter (where e.success))::numeric, 1),
         round((percentile_cont(0.99) within group (order by e.latency_ms) filter (where e.success))::numeric, 1),
         coalesce(sum(e.prompt_tokens), 0)::bigint, coalesce(sum(e.completion_tokens), 0)::bigint,
         coalesce(sum(e.total_tokens), 0)::bigint,
         round(coalesce(sum(ops.event_cost_usd(e.model, e.created_at, e.prompt_tokens, e.cached_prompt_tokens, e.completion_tokens))
                        filter (where ops.is_billed(e.prompt_tokens, e.completion_tokens, e.total_tokens)), 0), 6),
         count(*) filter (where ops.event_cost_usd(e.model, e.created_at, e.prompt_tokens, e.cached_prompt_tokens, e.completion_tokens) is null
                          and ops.is_billed(e.prompt_tokens, e.completion_tokens, e.total_tokens))
  from public.agent_usage_events e
  where e.created_at >= p_from and e.created_at < p_to and (p_org is null or e.org_id = p_org)
  group by 1, 2
$$;
create function pg_temp.raw_monthly() returns setof record language sql as $$
  select date_trunc('month', e.created_at, 'UTC'), e.org_id, e.model, sum(e.event_count)::bigint,
         coalesce(sum(e.event_count) filter (where e.success), 0)::bigint, coalesce(sum(e.prompt_tokens), 0)::bigint,
         coalesce(sum(e.cached_prompt_tokens), 0)::bigint, coalesce(sum(e.completion_tokens), 0)::bigint,
         round(coalesce(sum(ops.event_cost_usd(e.model, e.created_at, e.prompt_tokens, e.cached_prompt_tokens, e.completion_tokens)), 0), 6),
         count(*) filter (where ops.event_cost_usd(e.model, e.created_at, e.prompt_tokens, e.cached_prompt_tokens, e.completion_tokens) is null)
  from public.agent_usage_events e
  where ops.is_billed(e.prompt_tokens, e.completion_tokens, e.total_tokens)
  group by 1, 2, 3
$$;
-- Every report, view and condition against its reference: the rows in one and
-- not the other, summed over every period below.
create function pg_temp.differences() returns integer language sql as $$
  select (sum((select count(*) from (
             (select * from ops.usage_report(r.f, r.t, r.b, r.o, r.by) except select * from pg_temp.raw_report(r.f, r.t, r.b, r.o, r.by))
             union all
             (select * from pg_temp.raw_report(r.f, r.t, r.b, r.o, r.by) except select * from ops.usage_report(r.f, r.t, r.b, r.o, r.by))) x))
        + (select count(*) from (
             (select * from ops.monthly_cost except select * from pg_temp.raw_monthly() as (m timestamptz, o uuid, md text, r bigint,
                s bigint, pt bigint, cpt bigint, ct bigint, u numeric, un bigint))
             union all
             (select * from pg_temp.raw_monthly() as (m timestamptz, o uuid, md text, r bigint, s bigint, pt bigint, cpt bigint,
                ct bigint, u numeric, un bigint) except select * from ops.monthly_cost)) y))::integer
  from (values
    (timestamptz '2026-03-10 09:00:00+00', timestamptz '2026-03-10 12:00:00+00', interval '15 minutes', null::uuid, true),
    ('2026-03-10 09:00:00+00', '2026-03-10 12:00:00+00', interval '1 hour', null, false),
    ('2026-03-10 09:07:30.5+00', '2026-03-10 11:41:12.25+00', null, null, false),
    ('2026-03-10 09:07:30.5+00', '2026-03-10 11:41:12.25+00', interval '90 seconds', null, false),
    ('2026-03-10 09:00:00+00', '2026-03-10 12:00:00+00', interval '15 minutes', '00000000-0000-0000-0000-0000000000a1', false),
    ('2026-03-09 00:00:00+00', '2026-03-12 00:00:00+00', interval '1 day', null, true),
    ('2026-03-09 00:00:00+00', '2026-03-10 10:17:00+00', null, '00000000-0000-0000-0000-0000000000a2', false),
    -- ops.health_15m's shape: all orgs, quarter hours, the last one partial.
    ('2026-03-09 21:45:00+00', '2026-03-10 11:08:41.5+00', interval '15 minutes', null, false),
    -- The daily report's: partial days at both ends (hours, quarter hours, minutes and raw rows at each).
    ('2026-03-09 21:13:20.5+00', '2026-03-10 10:41:30+00', interval '1 day', null, false),
    ('2026-03-09 21:13:20.5+00', '2026-03-10 10:41:30+00', interval '2 hours', null, true)
  ) r (f, t, b, o, by)
$$;
-- The success rate over the trailing 15 minutes, globally and per org, from the raw rows.
create function pg_temp.raw_rates(p_now timestamptz) returns table (subject text, served bigint, succeeded bigint) language sql as $$
  select case when grouping(e.org_id) = 1 then 'global' else 'org:' || e.org_id end,
         sum(e.event_count) filter (where ops.is_served_outcome(e.success, e.error_code)),
         sum(e.event_count) filter (where e.success)
  from public.agent_usage_events e
  where e.created_at > p_now - interval '15 minutes' and e.created_at <= p_now
  group by grouping sets ((e.org_id), ())
$$;
-- Billed requests of the last hour per reported model without a price, from the raw rows.
create function pg_temp.raw_unpriced(p_now timestamptz) returns table (subject text, events numeric) language sql as $$
  select 'model:' || e.model, sum(e.event_count)::numeric
  from public.agent_usage_events e
  where e.created_at > p_now - interval '1 hour' and e.created_at <= p_now
    and ops.is_billed(e.prompt_tokens, e.completion_tokens, e.total_tokens)
  group by e.model
  having ops.event_cost_usd(e.model, p_now, 0, 0, 0) is null
$$;
create function pg_temp.spend_and_alert_differences(p_now timestamptz) returns integer language sql as $$
  select (select count(*) from (
            select s.org_id, s.estimated_usd from ops.month_to_date_spend(p_now) s
            except
            select e.org_id, round(coalesce(sum(ops.event_cost_usd(e.model, e.created_at, e.prompt_tokens, e.cached_prompt_tokens, e.completion_tokens)), 0), 6)
            from public.agent_usage_events e
            where ops.is_billed(e.prompt_tokens, e.completion_tokens, e.total_tokens)
              and e.created_at >= date_trunc('month', p_now, 'UTC') and e.created_at <= p_now
            group by grouping sets ((e.org_id), ())) x)::integer
       + (select count(*) from (
            select (a.details ->> 'served')::bigint, (a.details ->> 'succeeded')::bigint
            from ops.evaluate_alerts(p_now, 1, 1.01) a where a.kind = 'success_rate' and a.subject = 'global'
            except
            select sum(e.event_count) filter (where ops.is_served_outcome(e.success, e.error_code)),
                   sum(e.event_count) filter (where e.success)
            from public.agent_usage_events e
            where e.created_at > p_now - interval '15 minutes' and e.created_at <= p_now) y)::integer
       + (select count(*) from (
            -- Every success-rate condition (all of them true at a threshold above 1), global and per org.
            (select a.subject, (a.details ->> 'served')::bigint, (a.details ->> 'succeeded')::bigint
             from ops.evaluate_alerts(p_now, 1, 1.01) a where a.kind = 'success_rate'
             except
             select s.subject, s.served, s.succeeded from pg_temp.raw_rates(p_now) s)
            union all
            (select s.subject, s.served, s.succeeded from pg_temp.raw_rates(p_now) s
             except
             select a.subject, (a.details ->> 'served')::bigint, (a.details ->> 'succeeded')::bigint
             from ops.evaluate_alerts(p_now, 1, 1.01) a where a.kind = 'success_rate')) z)::integer
       + (select count(*) from (
            (select a.subject, a.observed from ops.evaluate_alerts(p_now) a where a.kind = 'unpriced_model'
             except
             select * from pg_temp.raw_unpriced(p_now))
            union all
            (select * from pg_temp.raw_unpriced(p_now)
             except
             select a.subject, a.observed from ops.evaluate_alerts(p_now) a where a.kind = 'unpriced_model')) v)::integer
       + (select count(*) from (
            select o.org::text, f.error_code, f.served, f.requests
            from (values (null::uuid), ('00000000-0000-0000-0000-0000000000a1')) o (org)
            cross join lateral ops.errors_by_code(p_now - interval '26 hours', p_now, o.org) f
            except all
            select o.org::text, coalesce(e.error_code, 'internal_error'), ops.is_served_outcome(false, e.error_code),
                   sum(e.event_count)::bigint
            from public.agent_usage_events e
            cross join (values (null::uuid), ('00000000-0000-0000-0000-0000000000a1')) o (org)
            where not e.success and e.created_at >= p_now - interval '26 hours' and e.created_at < p_now
              and (o.org is null or e.org_id = o.org)
            group by 1, 2, 3) w)::integer
$$;
-- Rows: three orgs, two models (one without a price), every outcome, repeated
-- latencies, aggregated refusals, cached tokens.
create function pg_temp.add_rows(p_prefix text, p_from timestamptz, p_n integer) returns void language sql as $$
  insert into public.agent_usage_events (request_id, org_id, model, channel, success, error_code, prompt_tokens,
    cached_prompt_tokens, completion_tokens, total_tokens, latency_ms, event_count, metadata, created_at)
  select p_prefix || i, ('00000000-0000-0000-0000-0000000000a' || (i % 3))::uuid,
         case when i % 4 = 0 then 'unpriced-model' else 'gpt-4.1-mini' end, case when i % 2 = 0 then 'app' else 'whatsapp' end,
         i % 5 <> 0, case i % 5 when 0 then 'openai_error' when 1 then null else null end,
         case when i % 10 = 5 then null else 100 + i % 13 end, case when i % 7 = 0 then 20 else 0 end,
         case when i % 10 = 5 then null else i % 17 end, case when i % 10 = 5 then null else 100 + i % 13 + i % 17 end,
         case when i % 11 = 0 then null else (i * 37) % 900 end, case when i % 10 = 5 then 3 else 1 end,
         case when i % 10 = 5 then '{"aggregated": true}'::jsonb else '{}' end,
         p_from + make_interval(secs => i * 7.3)
  from generate_series(1, p_n) i
$$;

-- test: before any refresh every report is the raw rows (all tail)
select pg_temp.add_rows('a-', '2026-03-10 09:00:00+00', 1200);
select pg_temp.add_rows('prev-', '2026-03-09 22:00:00+00', 300);
select is(pg_temp.differences(), 0, 'reports equal the raw rows before the rollup holds anything');
select is(pg_temp.spend_and_alert_differences('2026-03-10 10:30:00.4+00'), 0, 'and so do month-to-date spend, errors by code and the success-rate and unpriced-model conditions');

select is((select count(*)::int from pg_temp.raw_unpriced('2026-03-10 10:30:00.4+00')), 1, 'the rows include an unpriced model in that hour');

-- test: a refresh folds every visible row
select is((ops.refresh_usage_rollups() ->> 'folded_through')::bigint, (select max(id) from public.agent_usage_events),
  'a refresh with nothing in flight folds every row');
select is((select array_agg(distinct level || ' ' || grain order by level || ' ' || grain) from ops.usage_rollup),
  array['all 00:01:00', 'all 00:15:00', 'all 01:00:00', 'all 1 day', 'cell 00:01:00', 'cell 1 day',
        'org 00:01:00', 'org 00:15:00', 'org 01:00:00', 'org 1 day'],
  'into every level and grain');
select is(pg_temp.differences(), 0, 'reports equal the raw rows from the rollup');
select is(pg_temp.spend_and_alert_differences('2026-03-10 10:30:00.4+00'), 0, 'month-to-date spend and the condition too');

-- test: the reports do read the rollup (a changed rollup row shows)
create function pg_temp.read_when_changed(p_level text, p_grain interval, p_at timestamptz, p_set text, p_health boolean default false)
returns integer language plpgsql as $$
declare
  v_differences integer;
begin
  execute format('update ops.usage_rollup set %s where level = %L and grain = %L and bucket_start = %L and success',
                 p_set, p_level, p_grain, p_at);
  if p_health then
    select pg_temp.health_differences() into v_differences;
  else
    select pg_temp.differences() into v_differences;
  end if;
  execute format('update ops.usage_rollup set %s where level = %L and grain = %L and bucket_start = %L and success',
                 replace(p_set, '+', '-'), p_level, p_grain, p_at);
  return v_differences;
end $$;
select isnt(pg_temp.read_when_changed('all', '15 minutes', '2026-03-10 10:00:00+00', 'requests = requests + 1000'), 0,
  'the reports read the all rows'' quarter hours');
select isnt(pg_temp.read_when_changed('org', '1 hour', '2026-03-10 09:00:00+00', 'requests = requests + 1000'), 0,
  'the org rows'' hours');
select isnt(pg_temp.read_when_changed('all', '1 minute', '2026-03-10 11:07:00+00', 'requests = requests + 1000'), 0,
  'minutes at a period''s edge');
select isnt(pg_temp.read_when_changed('cell', '1 day', '2026-03-10 00:00:00+00', 'billed_requests = billed_requests + 1000'), 0,
  'the monthly cost reads the cells'' days');
select isnt(pg_temp.read_when_changed('all', '15 minutes', '2026-03-10 10:00:00+00',
                                      'latency_percentiles[2] = latency_percentiles[2] + 1000'), 0,
  'a quarter hour''s latency percentiles are the all row''s, kept when it was folded');

-- test: late rows (back-dated into minutes already folded) are counted before and after the next refresh
select pg_temp.add_rows('late-', '2026-03-10 09:30:03+00', 400);
select is(pg_temp.differences(), 0, 'late rows count from the raw tail');
select is(pg_temp.spend_and_alert_differences('2026-03-10 10:30:00.4+00'), 0, 'in spend and the condition too');
select ops.refresh_usage_rollups();
select is(pg_temp.differences(), 0, 'and from the rollup once folded into their minutes');
select is(pg_temp.spend_and_alert_differences('2026-03-10 10:30:00.4+00'), 0, 'in spend and the condition too');
select is((select count(*)::int from (select r.level, r.grain from ops.usage_rollup r group by 1, 2
                                      having sum(r.requests) = (select sum(event_count) from public.agent_usage_events)) x), 10,
  'every request is folded once in each level and grain');
select is((select count(*)::int from ops.usage_rollup r
           where (r.level = 'all' and r.latency_values is not null)
             and r.latency_percentiles is distinct from ops.latency_percentiles(r.latency_values, r.latency_counts)), 0,
  'the all rows'' percentiles are those of their merged distribution');

-- test: a rebuild (after a retroactive price change) gives the same reports
insert into ops.model_prices (model, effective_from, input_usd_per_million, cached_input_usd_per_million, output_usd_per_million)
values ('unpriced-model', '2026-03-10 10:00:00+00', 1, 0.5, 2);
select ops.rebuild_usage_rollups('2026-03-10 09:45:00+00');
select is(pg_temp.differences(), 0, 'a rebuild folds the new prices');

-- test: retention takes the rollup of the minutes it drops
select ops.drop_usage_partitions_before('2026-03-10 10:00:00+00');
select is((select count(*)::int from ops.usage_rollup where bucket_start < '2026-03-10 00:00:00+00'), 0,
  'retention (by whole days) drops the rollup of the same days');
select is(pg_temp.differences(), 0, 'and the reports still equal the raw rows');

-- test: ops.health_15m itself (the 24 hours before now()): before a refresh,
-- with late rows above the watermark, and once they are folded
create function pg_temp.health_differences() returns integer language sql as $$
  select count(*)::integer from (
    (select * from ops.health_15m
     except
     select * from pg_temp.raw_report(date_bin(interval '15 minutes', now(), timestamptz '2000-01-01') - interval '24 hours',
                                      now() + interval '1 second', interval '15 minutes', null, false))
    union all
    (select * from pg_temp.raw_report(date_bin(interval '15 minutes', now(), timestamptz '2000-01-01') - interval '24 hours',
                                      now() + interval '1 second', interval '15 minutes', null, false)
     except
     select * from ops.health_15m)) x
$$;
select pg_temp.add_rows('now-', now() - interval '3 hours', 1450);
select is(pg_temp.health_differences(), 0, 'ops.health_15m equals the raw rows before a refresh');
select ops.refresh_usage_rollups();
select pg_temp.add_rows('now-late-', now() - interval '2 hours 10 minutes', 200);
select is(pg_temp.health_differences(), 0, 'and after it, with late rows in quarter hours already folded');
-- and one at now() itself, in the current quarter hour whatever the clock
select pg_temp.add_rows('current-', now() - interval '7.3 seconds', 1);
select ops.refresh_usage_rollups();
select is(pg_temp.health_differences(), 0, 'and once those are folded too');
select isnt(pg_temp.read_when_changed('all', '15 minutes', date_bin('15 minutes', now(), '2000-01-01'), 'requests = requests + 1000', true), 0,
  'the current quarter hour is read as one all row (nothing folded lies past now)');
-- A row from a clock ahead (the last instant of the current quarter hour) folded: that quarter
-- hour's row now holds a row after the view's end, so it is read in its minutes.
select pg_temp.add_rows('ahead-', date_bin('15 minutes', now(), '2000-01-01') + interval '15 minutes'
                                  - interval '1 microsecond' - interval '7.3 seconds', 1);
select ops.refresh_usage_rollups();
select is(pg_temp.health_differences(), 0, 'and in its minutes once a folded row lies past now');

-- test: callers without the service role
select tests.authenticate_as_anon();
select throws_ok($$ select ops.refresh_usage_rollups() $$, '42501', null, 'anon cannot refresh the rollup');
select tests.clear_authentication();

select * from finish();
rollback;
