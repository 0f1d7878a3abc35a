-- agent-chat: recorded alerts, the scheduled check, and nightly purge.
--
-- ops.evaluate_alerts (previous migration) says which conditions are true at
-- a moment. ops.check_alerts records them: one open event per condition
-- (kind + subject + window), kept up to date while it holds, resolved when it
-- clears. pg_cron runs the check every minute and the purge nightly when the
-- extension is enabled; without it, call the functions from any scheduler.

create table ops.alert_settings (
  id boolean primary key default true check (id),
  min_requests integer not null default 10 check (min_requests > 0),
  success_threshold numeric(5, 4) not null default 0.98 check (success_threshold > 0 and success_threshold <= 1),
  webhook_url text check (webhook_url is null or webhook_url ~ '^https://'),
  updated_at timestamptz not null default now()
);
comment on table ops.alert_settings is
  'One row: the success-rate threshold and minimum traffic for the success-rate alert, and an optional https webhook that receives raised and resolved alerts through pg_net when that extension is enabled.';
comment on column ops.alert_settings.min_requests is 'Served requests a 15-minute window needs before its success rate can alert (no paging on 1 failure out of 2).';
insert into ops.alert_settings default values;
alter table ops.alert_settings enable row level security;
revoke all on ops.alert_settings from public, anon, authenticated;
grant select, update on ops.alert_settings to service_role;

create table ops.alert_events (
  id bigint generated always as identity primary key,
  kind text not null check (kind in ('success_rate', 'budget')),
  subject text not null,
  window_start timestamptz not null,
  observed numeric not null,
  threshold numeric not null,
  details jsonb not null default '{}'::jsonb,
  raised_at timestamptz not null,
  last_seen_at timestamptz not null,
  resolved_at timestamptz
);
comment on table ops.alert_events is
  'Alerts raised by ops.check_alerts: kind success_rate (subject global) or budget (subject global or org:<id>). One open row per kind, subject and window; resolved_at is set when the condition clears. Rows are history: never deleted by the purge.';
comment on column ops.alert_events.window_start is
  'success_rate: when the alert was first seen (its window is the trailing 15 minutes at each check); budget: the first day of the month.';
comment on column ops.alert_events.observed is 'Latest observed value: success rate (0..1) or month-to-date USD.';
comment on column ops.alert_events.last_seen_at is 'Last check at which the condition still held.';
create unique index alert_events_one_open_idx on ops.alert_events (kind, subject) where resolved_at is null;
create index alert_events_raised_at_idx on ops.alert_events (raised_at desc);
alter table ops.alert_events enable row level security;
revoke all on ops.alert_events from public, anon, authenticated;
grant select, insert, update on ops.alert_events to service_role;

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
  v_seen text[] := '{}';
begin
  -- One check at a time: concurrent runs would race on the open rows.
  perform pg_advisory_xact_lock(hashtext('ops.check_alerts'));
  select * into v_settings from ops.alert_settings;

  for v_condition in
    select * from ops.evaluate_alerts(p_now, v_settings.min_requests, v_settings.success_threshold)
  loop
    v_seen := v_seen || (v_condition.kind || '|' || v_condition.subject);
    update ops.alert_events a
    set observed = v_condition.observed,
        threshold = v_condition.threshold,
        details = v_condition.details,
        last_seen_at = p_now
    where a.kind = v_condition.kind and a.subject = v_condition.subject and a.resolved_at is null
      and (a.kind <> 'budget' or a.window_start = v_condition.window_start);
    if not found then
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
    perform ops.forward_alert(v_event, 'resolved');
  end loop;

  return jsonb_build_object(
    'raised', v_raised,
    'resolved', v_resolved,
    'open', (select count(*) from ops.alert_events a where a.resolved_at is null)
  );
end;
$$;
comment on function ops.check_alerts(timestamptz) is
  'Records alert conditions true at p_now into ops.alert_events (raise once, refresh while true, resolve when cleared) and forwards changes to the webhook. pg_cron runs it every minute when enabled; otherwise call it from any scheduler.';

create view ops.open_alerts with (security_invoker = true) as
  select a.id, a.kind, a.subject, a.observed, a.threshold, a.raised_at, a.last_seen_at, a.details
  from ops.alert_events a
  where a.resolved_at is null
  order by a.raised_at;
comment on view ops.open_alerts is 'Alerts raised by ops.check_alerts that have not cleared yet.';

revoke execute on function ops.forward_alert(ops.alert_events, text) from public, anon, authenticated;
revoke execute on function ops.check_alerts(timestamptz) from public, anon, authenticated;
grant execute on function ops.forward_alert(ops.alert_events, text) to service_role;
grant execute on function ops.check_alerts(timestamptz) to service_role;
grant select on ops.open_alerts to service_role;

-- Schedules, only where pg_cron is enabled (Database → Extensions on hosted
-- Supabase; enable it, then re-run this block from the runbook).
do $$
begin
  if exists (select 1 from pg_extension where extname = 'pg_cron') then
    perform cron.schedule('agent-chat-check-alerts', '* * * * *', 'select ops.check_alerts()');
    perform cron.schedule('agent-chat-purge-expired', '17 3 * * *', 'select ops.purge_expired()');
  end if;
end;
$$;
