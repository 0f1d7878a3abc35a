-- agent-chat: alerts and the schedules.
--
-- ops.evaluate_alerts says which conditions are true at a moment.
-- ops.check_alerts records them in ops.alert_events: one open event per
-- condition (kind + subject + window), kept up to date while it holds,
-- resolved when it clears. An operator acknowledges an open event
-- (ops.alert_ack) or mutes a kind and subject until a time (ops.alert_mute):
-- while muted, a condition raises no new event and nothing is forwarded, so
-- a flapping success rate or a known budget overrun does not re-fire. pg_cron
-- runs the check every minute when the extension is enabled (the nightly
-- purge is scheduled with it, by the members' data migration); without it,
-- call the functions from any scheduler.

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
    -- (p_now - 15 minutes, p_now] from the rollup and the raw tail (ops.usage_cells).
    select
      coalesce(sum(c.requests) filter (where ops.is_served_outcome(c.success, c.error_code)), 0) as served,
      coalesce(sum(c.requests) filter (where c.success), 0) as succeeded,
      coalesce(jsonb_object_agg(c.code, c.n) filter (where c.code is not null), '{}'::jsonb) as codes
    from (select x.success, x.error_code, x.requests,
                 case when not x.success and ops.is_served_outcome(x.success, x.error_code) then x.error_code end as code,
                 sum(x.requests) filter (where not x.success and ops.is_served_outcome(x.success, x.error_code))
                   over (partition by x.error_code) as n
          from ops.usage_cells(p_now - interval '15 minutes' + interval '1 microsecond', p_now + interval '1 microsecond') x) c
  ) w
  where w.served >= p_min_requests and w.succeeded::numeric / w.served < p_success_threshold
  union all
  select 'budget',
         case when b.org_id is null then 'global' else 'org:' || b.org_id end,
         date_trunc('month', p_now, 'UTC'), p_now,
         s.estimated_usd, b.monthly_usd,
         jsonb_build_object('org_id', b.org_id, 'budget_usd', b.monthly_usd, 'spent_usd', s.estimated_usd)
  from ops.budgets b
  -- The spend counters, as enforced budgets read them: kept with the usage
  -- log off too (AI_AGENT_USAGE_LOG_ENABLED=false stops rows, not counters).
  join (select c.org_id, round(c.usd, 6) as estimated_usd
        from ops.spend_counters c
        where c.month = date_trunc('month', p_now at time zone 'UTC')::date
        union all
        select null, round(coalesce(sum(c.usd), 0), 6)
        from ops.spend_counters c
        where c.month = date_trunc('month', p_now at time zone 'UTC')::date) s
    on s.org_id is not distinct from b.org_id
  where s.estimated_usd > b.monthly_usd
  union all
  -- A reported model name without a price in the last hour: charged at the
  -- requested model's price (metadata.priced_as) or, without one, at $0.
  -- Either way the operator adds the name to ops.model_prices.
  select 'unpriced_model', 'model:' || u.model, p_now - interval '1 hour', p_now,
         u.events, 0,
         jsonb_build_object('model', u.model, 'events', u.events, 'priced_as', u.priced_as)
  from (
    select e.model, sum(e.event_count) as events,
           (array_agg(distinct e.metadata ->> 'priced_as') filter (where e.metadata ? 'priced_as'))[1] as priced_as
    from public.agent_usage_events e
    where e.created_at > p_now - interval '1 hour' and e.created_at <= p_now
      and ops.is_billed(e.prompt_tokens, e.completion_tokens, e.total_tokens)
    group by e.model
  ) u
  where ops.event_cost_usd(u.model, p_now, 0, 0, 0) is null;
$$;
comment on function ops.evaluate_alerts(timestamptz, integer, numeric) is
  'Alert conditions true at p_now: success rate below 98% over the trailing 15 minutes (with at least p_min_requests served; requests counted with sum(event_count)); month-to-date spend (ops.spend_counters, kept with the usage log off too) over a global or per-org budget; a reported model name without a price in ops.model_prices in the last hour (unpriced_model, subject model:<name>).';

create view ops.active_alerts with (security_invoker = true) as
  select * from ops.evaluate_alerts();
comment on view ops.active_alerts is 'Alert conditions true right now (see ops.evaluate_alerts).';

-- Forwarding: a no-op unless pg_net is installed and a webhook is set.
-- Called through dynamic SQL so this migration does not depend on pg_net.
create function ops.forward_alert(p_event ops.alert_events, p_state text)
returns void
language plpgsql
set search_path = ''
as $$
declare
  v_url text;
begin
  select s.webhook_url into v_url from ops.alert_settings s;
  if v_url is null or to_regprocedure('net.http_post(text,jsonb,jsonb,jsonb,integer)') is null then
    return;
  end if;
  execute 'select net.http_post(url => $1, body => $2, headers => $3)'
    using v_url,
          jsonb_build_object('state', p_state, 'alert', to_jsonb(p_event)),
          jsonb_build_object('content-type', 'application/json');
end;
$$;
comment on function ops.forward_alert(ops.alert_events, text) is
  'POSTs {state: raised|resolved, alert} to ops.alert_settings.webhook_url through pg_net (net.http_post) when both exist; otherwise does nothing.';

create function ops.check_alerts(p_now timestamptz default now())
returns jsonb
language plpgsql
set search_path = ''
as $$
declare
  v_settings ops.alert_settings%rowtype;
  v_condition record;
  v_event ops.alert_events%rowtype;
  v_raised integer := 0;
  v_resolved integer := 0;
  v_suppressed integer := 0;
  v_muted boolean;
  v_seen text[] := '{}';
begin
  -- One check at a time: concurrent runs would race on the open rows.
  perform pg_advisory_xact_lock(hashtext('ops.check_alerts'));
  select * into v_settings from ops.alert_settings;

  for v_condition in
    select * from ops.evaluate_alerts(p_now, v_settings.min_requests, v_settings.success_threshold)
  loop
    v_seen := v_seen || (v_condition.kind || '|' || v_condition.subject);
    v_muted := exists (select 1 from ops.alert_mutes m
                       where m.kind = v_condition.kind and m.subject = v_condition.subject and m.muted_until > p_now);
    update ops.alert_events a
    set observed = v_condition.observed,
        threshold = v_condition.threshold,
        details = v_condition.details,
        last_seen_at = p_now
    where a.kind = v_condition.kind and a.subject = v_condition.subject and a.resolved_at is null
      and (a.kind <> 'budget' or a.window_start = v_condition.window_start);
    if not found and v_muted then
      v_suppressed := v_suppressed + 1;
    elsif not found then
      -- A budget alert of last month is over when the month is.
      update ops.alert_events a set resolved_at = p_now
      where a.kind = v_condition.kind and a.subject = v_condition.subject and a.resolved_at is null
      returning * into v_event;
      if found then
        v_resolved := v_resolved + 1;
        perform ops.forward_alert(v_event, 'resolved');
      end if;
      insert into ops.alert_events (kind, subject, window_start, observed, threshold, details, raised_at, last_seen_at)
      values (v_condition.kind, v_condition.subject,
              case when v_condition.kind = 'budget' then v_condition.window_start else p_now end,
              v_condition.observed, v_condition.threshold, v_condition.details, p_now, p_now)
      returning * into v_event;
      v_raised := v_raised + 1;
      perform ops.forward_alert(v_event, 'raised');
    end if;
  end loop;

  for v_event in
    update ops.alert_events a set resolved_at = p_now
    where a.resolved_at is null and not ((a.kind || '|' || a.subject) = any (v_seen))
    returning *
  loop
    v_resolved := v_resolved + 1;
    if not exists (select 1 from ops.alert_mutes m
                   where m.kind = v_event.kind and m.subject = v_event.subject and m.muted_until > p_now) then
      perform ops.forward_alert(v_event, 'resolved');
    end if;
  end loop;

  return jsonb_build_object(
    'raised', v_raised,
    'resolved', v_resolved,
    'muted', v_suppressed,
    'open', (select count(*) from ops.alert_events a where a.resolved_at is null)
  );
end;
$$;
comment on function ops.check_alerts(timestamptz) is
  'Records alert conditions true at p_now into ops.alert_events (raise once, refresh while true, resolve when cleared) and forwards changes to the webhook; a muted kind and subject (ops.alert_mutes) raises nothing and forwards nothing (counted as muted). pg_cron runs it every minute when enabled; otherwise call it from any scheduler.';

create view ops.open_alerts with (security_invoker = true) as
  select a.id, a.kind, a.subject, a.observed, a.threshold, a.raised_at, a.last_seen_at, a.details,
         a.acknowledged_at, a.acknowledged_by, m.muted_until
  from ops.alert_events a
  left join ops.alert_mutes m on m.kind = a.kind and m.subject = a.subject and m.muted_until > now()
  where a.resolved_at is null
  order by a.raised_at;
comment on view ops.open_alerts is 'Alerts raised by ops.check_alerts that have not cleared yet, with who acknowledged them and until when they are muted.';

create function ops.alert_ack(p_alert_id bigint, p_actor text default null, p_now timestamptz default now())
returns ops.alert_events
language plpgsql
set search_path = ''
as $$
declare
  v_old ops.alert_events;
  v_new ops.alert_events;
begin
  select a.* into v_old from ops.alert_events a where a.id = p_alert_id for update;
  if not found then
    raise exception 'no alert with id %', p_alert_id using errcode = 'P0002';
  end if;
  if v_old.resolved_at is not null then
    raise exception 'alert % is already resolved', p_alert_id using errcode = '22023';
  end if;
  update ops.alert_events a
  set acknowledged_at = p_now, acknowledged_by = coalesce(nullif(btrim(p_actor), ''), current_user::text)
  where a.id = p_alert_id
  returning a.* into v_new;
  perform ops.audit(p_actor, 'alert_ack', null, null, to_jsonb(v_old), to_jsonb(v_new));
  return v_new;
end;
$$;
comment on function ops.alert_ack(bigint, text, timestamptz) is
  'Acknowledges an open alert (someone is on it); it stays open until its condition clears. Audited. CLI: alerts ack <id>.';

create function ops.alert_mute(
  p_kind text,
  p_subject text,
  p_until timestamptz,
  p_reason text default null,
  p_actor text default null,
  p_now timestamptz default now()
)
returns ops.alert_mutes
language plpgsql
set search_path = ''
as $$
declare
  v_old ops.alert_mutes;
  v_new ops.alert_mutes;
  v_subject text := lower(btrim(p_subject));
begin
  perform ops.operator_change();
  if p_kind is null or p_kind not in ('success_rate', 'budget', 'unpriced_model') then
    raise exception 'kind must be success_rate, budget or unpriced_model, got %', coalesce(p_kind, 'NULL') using errcode = '22023';
  end if;
  -- The subject as alerts name it: global, or org: and the org id in its
  -- canonical (lowercase) form, whatever case the operator typed; an
  -- unpriced model's subject is model: and its name, as reported.
  if p_kind = 'unpriced_model' then
    v_subject := btrim(p_subject);
    if v_subject is null or v_subject !~ '^model:.+' then
      raise exception 'subject must be model:<name>, got %', coalesce(p_subject, 'NULL') using errcode = '22023';
    end if;
  elsif v_subject is null or v_subject !~ '^(global|org:[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})$' then
    raise exception 'subject must be global or org:<uuid>, got %', coalesce(p_subject, 'NULL') using errcode = '22023';
  end if;
  if p_until is null or p_until <= p_now then
    raise exception 'mute until must be in the future' using errcode = '22023';
  end if;
  select m.* into v_old from ops.alert_mutes m where m.kind = p_kind and m.subject = v_subject;
  insert into ops.alert_mutes as m (kind, subject, muted_until, reason, muted_by)
  values (p_kind, v_subject, p_until, p_reason, coalesce(nullif(btrim(p_actor), ''), current_user::text))
  on conflict (kind, subject) do update
  set muted_until = excluded.muted_until, reason = excluded.reason, muted_by = excluded.muted_by, created_at = now()
  returning m.* into v_new;
  perform ops.audit(p_actor, 'alert_mute', null, null, to_jsonb(v_old), to_jsonb(v_new));
  return v_new;
end;
$$;
comment on function ops.alert_mute(text, text, timestamptz, text, text, timestamptz) is
  'Mutes alerts of one kind (success_rate, budget, unpriced_model) and subject (global, org:<uuid>, model:<name>) until p_until: ops.check_alerts raises no new event and forwards nothing for them meanwhile. Audited. CLI: alerts mute <kind> <subject> --until.';

create function ops.alert_unmute(p_kind text, p_subject text, p_actor text default null)
returns boolean
language plpgsql
set search_path = ''
as $$
declare
  v_old ops.alert_mutes;
begin
  perform ops.operator_change();
  delete from ops.alert_mutes m
  where m.kind = p_kind
    and m.subject = case when p_kind = 'unpriced_model' then btrim(p_subject) else lower(btrim(p_subject)) end
  returning m.* into v_old;
  if not found then
    return false;
  end if;
  perform ops.audit(p_actor, 'alert_unmute', null, null, to_jsonb(v_old), null);
  return true;
end;
$$;
comment on function ops.alert_unmute(text, text, text) is 'Ends a mute now; true if there was one. Audited. CLI: alerts unmute <kind> <subject>.';

-- The schedule, only where pg_cron is enabled (Database → Extensions on hosted
-- Supabase; enable it, then run the block in the runbook).
do $$
begin
  if exists (select 1 from pg_extension where extname = 'pg_cron') then
    perform cron.schedule('agent-chat-check-alerts', '* * * * *', 'select ops.check_alerts()');
  end if;
end;
$$;

-- ---------------------------------------------------------------------------
-- Privileges of every function and view above, one statement each (checked
-- by supabase/tests/database/004_privileges_inventory.test.sql): service_role
-- alone may execute or read them.
-- ---------------------------------------------------------------------------
revoke execute on function
  ops.evaluate_alerts(timestamptz, integer, numeric),
  ops.forward_alert(ops.alert_events, text),
  ops.check_alerts(timestamptz),
  ops.alert_ack(bigint, text, timestamptz),
  ops.alert_mute(text, text, timestamptz, text, text, timestamptz),
  ops.alert_unmute(text, text, text)
from public, anon, authenticated;
grant execute on function
  ops.evaluate_alerts(timestamptz, integer, numeric),
  ops.forward_alert(ops.alert_events, text),
  ops.check_alerts(timestamptz),
  ops.alert_ack(bigint, text, timestamptz),
  ops.alert_mute(text, text, timestamptz, text, text, timestamptz),
  ops.alert_unmute(text, text, text)
to service_role;
grant select on ops.active_alerts, ops.open_alerts to service_role;
