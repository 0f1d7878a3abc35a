-- agent-chat: recording alerts and delivering their notifications.
--
-- ops.check_alerts records the conditions of ops.evaluate_alerts in
-- ops.alert_events (raise once, refresh while true, resolve when clear) and,
-- in the same transaction, writes one outbox row per notification and
-- destination (ops.alert_outbox). The agent-alerts Edge Function delivers
-- them: each cycle (public.agent_alerts_begin_cycle) reports which
-- destinations it has secrets for, runs the check and claims the due rows
-- under a lease (for update skip locked), sends them, then records every
-- result (public.agent_alerts_record): delivered, retried with exponential
-- backoff, or failed after the last attempt, which raises a delivery_failed
-- alert on the other destinations. A row's message_id (Standard Webhooks
-- webhook-id) and dedup_key (PagerDuty) are its own, so every retry repeats
-- them. pg_cron runs the check every minute and, with pg_net and the Vault,
-- calls the function every minute (ops.schedule_alert_delivery).

-- ---------------------------------------------------------------------------
-- Tables: the destinations the function reported, and the outbox.
-- ---------------------------------------------------------------------------
create table ops.alert_destinations (
  destination text primary key check (destination in ('slack', 'pagerduty', 'webhook')),
  reported_at timestamptz not null default now()
);
comment on table ops.alert_destinations is
  'The destinations the agent-alerts function has secrets for, as it reported them at its last cycle. Notifications are queued for these; with none, alerts are only recorded (ops.open_alerts says so).';
alter table ops.alert_destinations enable row level security;
revoke all on ops.alert_destinations from public, anon, authenticated;
grant select, insert, update, delete on ops.alert_destinations to service_role;

create table ops.alert_outbox (
  id bigint generated always as identity primary key,
  alert_id bigint references ops.alert_events (id),
  state text not null check (state in ('raised', 'warning', 'resolved', 'test')),
  destination text not null check (destination in ('slack', 'pagerduty', 'webhook')),
  message_id text not null unique default ('msg_' || replace(gen_random_uuid()::text, '-', '')),
  dedup_key text not null,
  payload jsonb not null,
  status text not null default 'pending' check (status in ('pending', 'delivered', 'failed')),
  attempts integer not null default 0,
  next_attempt_at timestamptz not null,
  claim_token uuid,
  leased_until timestamptz,
  last_status integer,
  last_error text,
  created_at timestamptz not null default now(),
  delivered_at timestamptz
);
comment on table ops.alert_outbox is
  'One row per notification (raised, warning, resolved, test) and destination, written in the transaction that decided to notify. The agent-alerts function claims due rows under a lease, sends them and records the result: delivered (never sent again), pending with next_attempt_at backed off exponentially, or failed after its last attempt (which raises a delivery_failed alert on the other destinations).';
comment on column ops.alert_outbox.message_id is 'The Standard Webhooks webhook-id of this notification: the same on every retry.';
comment on column ops.alert_outbox.dedup_key is 'PagerDuty dedup_key: the alert''s, so its resolve closes the incident its trigger opened.';
comment on column ops.alert_outbox.payload is 'The alert as it was when the notification was queued (kind, subject, observed, threshold, details).';
comment on column ops.alert_outbox.attempts is 'Sends started (counted when claimed).';
comment on column ops.alert_outbox.claim_token is 'Set by the claim that holds the row; its result is recorded only with this token.';
comment on column ops.alert_outbox.leased_until is 'No other cycle claims the row before this (a cycle that died mid-send releases it this way).';
create index alert_outbox_due_idx on ops.alert_outbox (next_attempt_at) where status = 'pending';
create index alert_outbox_alert_idx on ops.alert_outbox (alert_id, destination);
alter table ops.alert_outbox enable row level security;
revoke all on ops.alert_outbox from public, anon, authenticated;
grant select, insert, update, delete on ops.alert_outbox to service_role;  -- delete: the retention purge (ops.purge_expired)

-- ---------------------------------------------------------------------------
-- Queueing a notification.
-- ---------------------------------------------------------------------------
create function ops.alert_enqueue(
  p_event ops.alert_events,
  p_state text,
  p_now timestamptz default now(),
  p_except text default null
)
returns integer
language plpgsql
set search_path = ''
as $$
declare
  v_count integer;
begin
  -- Muted: nothing is sent, except the resolve of an alert whose raise was
  -- sent before the mute (so a PagerDuty incident it opened is closed).
  if ops.alert_muted_until(p_event.kind, p_event.subject, p_now) is not null
     and not (p_state = 'resolved' and exists (select 1 from ops.alert_outbox o where o.alert_id = p_event.id)) then
    return 0;
  end if;
  insert into ops.alert_outbox (alert_id, state, destination, dedup_key, payload, next_attempt_at)
  select p_event.id, p_state, d.destination, 'agent-chat/alert/' || p_event.id,
         jsonb_build_object(
           'alert_id', p_event.id, 'state', p_state, 'kind', p_event.kind, 'subject', p_event.subject,
           'org_id', case when p_event.subject like 'org:%' then substr(p_event.subject, 5) end,
           'observed', p_event.observed, 'threshold', p_event.threshold, 'details', p_event.details,
           'raised_at', p_event.raised_at, 'resolved_at', p_event.resolved_at),
         p_now
  from ops.alert_destinations d
  where d.destination is distinct from p_except;
  get diagnostics v_count = row_count;
  return v_count;
end;
$$;
comment on function ops.alert_enqueue(ops.alert_events, text, timestamptz, text) is
  'Queues one notification of an alert (raised, warning, resolved) for every reported destination but p_except, unless its kind and subject are muted (a resolve still goes out when the raise did). Returns the rows queued.';

-- ---------------------------------------------------------------------------
-- The recorded check.
-- ---------------------------------------------------------------------------
create function ops.check_alerts(p_now timestamptz default now())
returns jsonb
language plpgsql
set search_path = ''
as $$
declare
  v_condition record;
  v_event ops.alert_events%rowtype;
  v_raised integer := 0;
  v_resolved integer := 0;
  v_suppressed integer := 0;
  v_seen text[] := '{}';
  v_monthly boolean;
  v_higher boolean;
begin
  -- One check at a time: concurrent runs would race on the open rows.
  perform pg_advisory_xact_lock(hashtext('ops.check_alerts'));
  for v_condition in select * from ops.evaluate_alerts(p_now) loop
    v_seen := v_seen || (v_condition.kind || '|' || v_condition.subject);
    v_monthly := v_condition.kind in ('budget', 'budget_warning');
    select a.* into v_event from ops.alert_events a
    where a.kind = v_condition.kind and a.subject = v_condition.subject and a.resolved_at is null
    for update;
    if found and (not v_monthly or v_event.window_start = v_condition.window_start) then
      -- Still true: refreshed. A budget warning at a higher ratio warns again.
      v_higher := v_condition.kind = 'budget_warning' and v_condition.threshold > v_event.threshold;
      update ops.alert_events a
      set observed = v_condition.observed, threshold = v_condition.threshold,
          details = v_condition.details, last_seen_at = p_now
      where a.id = v_event.id
      returning a.* into v_event;
      if v_higher then
        perform ops.alert_enqueue(v_event, 'warning', p_now);
      end if;
      continue;
    end if;
    if found then
      -- A budget alert of last month is over when the month is.
      update ops.alert_events a set resolved_at = p_now where a.id = v_event.id returning a.* into v_event;
      v_resolved := v_resolved + 1;
      perform ops.alert_enqueue(v_event, 'resolved', p_now);
    end if;
    if ops.alert_muted_until(v_condition.kind, v_condition.subject, p_now) is not null then
      v_suppressed := v_suppressed + 1;
      continue;
    end if;
    insert into ops.alert_events (kind, subject, window_start, observed, threshold, details, raised_at, last_seen_at)
    values (v_condition.kind, v_condition.subject, case when v_monthly then v_condition.window_start else p_now end,
            v_condition.observed, v_condition.threshold, v_condition.details, p_now, p_now)
    returning * into v_event;
    v_raised := v_raised + 1;
    perform ops.alert_enqueue(v_event, case when v_condition.kind = 'budget_warning' then 'warning' else 'raised' end, p_now);
  end loop;

  -- Conditions no longer true resolve (delivery_failed alerts resolve when
  -- their destination delivers again, in ops.alert_delivery_done).
  for v_event in
    update ops.alert_events a set resolved_at = p_now
    where a.resolved_at is null and a.kind <> 'delivery_failed'
      and not ((a.kind || '|' || a.subject) = any (v_seen))
    returning *
  loop
    v_resolved := v_resolved + 1;
    perform ops.alert_enqueue(v_event, 'resolved', p_now);
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
  'Records the alert conditions true at p_now (ops.evaluate_alerts) into ops.alert_events (raise once, refresh while true, resolve when cleared) and queues their notifications in ops.alert_outbox in the same transaction; a muted kind and subject raises nothing and queues nothing (counted as muted). Run every minute by pg_cron and by each agent-alerts cycle.';

-- ---------------------------------------------------------------------------
-- Delivery: claim, record, fail over.
-- ---------------------------------------------------------------------------
create function ops.alert_claim(
  p_destinations text[],
  p_limit integer,
  p_lease_seconds integer,
  p_now timestamptz default now()
)
returns setof ops.alert_outbox
language sql
set search_path = ''
as $$
  with due as (
    select o.id
    from ops.alert_outbox o
    where o.status = 'pending' and o.next_attempt_at <= p_now
      and (o.leased_until is null or o.leased_until <= p_now)
      and o.destination = any (p_destinations)
      -- In order per alert and destination: a resolve never overtakes its trigger.
      and not exists (select 1 from ops.alert_outbox p
                      where p.alert_id = o.alert_id and p.destination = o.destination
                        and p.id < o.id and p.status = 'pending')
    order by o.id
    limit p_limit
    for update skip locked
  )
  update ops.alert_outbox o
  set attempts = o.attempts + 1, claim_token = gen_random_uuid(),
      leased_until = p_now + make_interval(secs => p_lease_seconds)
  from due
  where o.id = due.id
  returning o.*;
$$;
comment on function ops.alert_claim(text[], integer, integer, timestamptz) is
  'Claims up to p_limit due notifications of the given destinations for p_lease_seconds (for update skip locked: concurrent cycles never claim the same row), counting the attempt.';

create function ops.alert_delivery_failed(p_row ops.alert_outbox, p_now timestamptz default now())
returns void
language plpgsql
set search_path = ''
as $$
declare
  v_event ops.alert_events;
  v_subject text := 'destination:' || p_row.destination;
  v_details jsonb := jsonb_build_object('destination', p_row.destination, 'notification_id', p_row.id,
                                        'alert_id', p_row.alert_id, 'attempts', p_row.attempts,
                                        'last_status', p_row.last_status, 'last_error', p_row.last_error);
begin
  update ops.alert_events a
  set observed = a.observed + 1, details = v_details, last_seen_at = p_now
  where a.kind = 'delivery_failed' and a.subject = v_subject and a.resolved_at is null;
  if found then
    return;
  end if;
  insert into ops.alert_events (kind, subject, window_start, observed, threshold, details, raised_at, last_seen_at)
  values ('delivery_failed', v_subject, p_now, 1, p_row.attempts, v_details, p_now, p_now)
  returning * into v_event;
  perform ops.alert_enqueue(v_event, 'raised', p_now, p_row.destination);
end;
$$;
comment on function ops.alert_delivery_failed(ops.alert_outbox, timestamptz) is
  'A notification ran out of attempts: raises (or counts into the open) delivery_failed alert of its destination, notified on the other destinations. observed: notifications failed since it was raised.';

create function ops.alert_delivery_done(
  p_id bigint,
  p_claim_token uuid,
  p_outcome text,
  p_status integer,
  p_error text,
  p_retry_base_seconds integer,
  p_max_attempts integer,
  p_now timestamptz default now()
)
returns text
language plpgsql
set search_path = ''
as $$
declare
  v_row ops.alert_outbox;
  v_event ops.alert_events;
begin
  select o.* into v_row from ops.alert_outbox o
  where o.id = p_id and o.claim_token = p_claim_token and o.status = 'pending'
  for update;
  if not found then
    return 'stale';
  end if;
  if p_outcome = 'skipped' then
    -- Not tried (its destination failed earlier in the cycle): the attempt is given back.
    update ops.alert_outbox o set attempts = o.attempts - 1, claim_token = null, leased_until = null
    where o.id = p_id;
    return 'pending';
  end if;
  if p_outcome = 'delivered' then
    update ops.alert_outbox o
    set status = 'delivered', delivered_at = p_now, last_status = p_status, last_error = null,
        claim_token = null, leased_until = null
    where o.id = p_id;
    -- The destination works again: its delivery_failed alert is over.
    for v_event in
      update ops.alert_events a set resolved_at = p_now
      where a.kind = 'delivery_failed' and a.subject = 'destination:' || v_row.destination and a.resolved_at is null
      returning *
    loop
      perform ops.alert_enqueue(v_event, 'resolved', p_now);
    end loop;
    return 'delivered';
  end if;
  update ops.alert_outbox o
  set status = case when o.attempts >= p_max_attempts then 'failed' else 'pending' end,
      last_status = p_status, last_error = left(p_error, 500),
      -- Capped at a day: uncapped, a late attempt overflows the timestamp and
      -- aborts the record of the whole cycle (test 106_alert_backoff_capped).
      next_attempt_at = p_now + make_interval(secs => least(p_retry_base_seconds * power(2, o.attempts - 1), 86400)),
      claim_token = null, leased_until = null
  where o.id = p_id
  returning o.* into v_row;
  if v_row.status = 'failed' then
    perform ops.alert_delivery_failed(v_row, p_now);
  end if;
  return v_row.status;
end;
$$;
comment on function ops.alert_delivery_done(bigint, uuid, text, integer, text, integer, integer, timestamptz) is
  'Records one send of a claimed notification (p_outcome delivered, error or skipped), if the claim is still the row''s: delivered (never sent again; ends its destination''s delivery_failed alert), pending again after p_retry_base_seconds x 2^(attempts-1) (at most a day), or failed once attempts reach p_max_attempts (raises delivery_failed). Returns the row''s status, or stale.';

-- ---------------------------------------------------------------------------
-- What agent-alerts calls (through the Data API).
-- ---------------------------------------------------------------------------
create function public.agent_alerts_begin_cycle(
  p_destinations text[],
  p_limit integer default 50,
  p_lease_seconds integer default 120,
  p_now timestamptz default now()
)
returns jsonb
language plpgsql
set search_path = ''
as $$
declare
  v_check jsonb;
  v_claimed jsonb;
begin
  -- Cycles report and check one at a time (the lock ops.check_alerts takes).
  perform pg_advisory_xact_lock(hashtext('ops.check_alerts'));
  delete from ops.alert_destinations d where not (d.destination = any (p_destinations));
  insert into ops.alert_destinations as d (destination, reported_at)
  select distinct x, p_now from unnest(p_destinations) x
  on conflict (destination) do update set reported_at = excluded.reported_at;
  v_check := ops.check_alerts(p_now);
  select coalesce(jsonb_agg(jsonb_build_object(
           'id', c.id, 'claim_token', c.claim_token, 'state', c.state, 'destination', c.destination,
           'message_id', c.message_id, 'dedup_key', c.dedup_key, 'payload', c.payload,
           'attempts', c.attempts, 'created_at', c.created_at) order by c.id), '[]'::jsonb)
  into v_claimed
  from ops.alert_claim(p_destinations, p_limit, p_lease_seconds, p_now) c;
  return jsonb_build_object('check', v_check, 'claimed', v_claimed);
end;
$$;
comment on function public.agent_alerts_begin_cycle(text[], integer, integer, timestamptz) is
  'One agent-alerts cycle, first half: records the destinations the function has (ops.alert_destinations), runs ops.check_alerts, and claims the due notifications. Returns {check, claimed: [...]}. Service role only.';

create function public.agent_alerts_record(
  p_results jsonb,
  p_retry_base_seconds integer default 30,
  p_max_attempts integer default 8,
  p_now timestamptz default now()
)
returns jsonb
language sql
set search_path = ''
as $$
  select coalesce(jsonb_object_agg(x.status, x.n), '{}'::jsonb)
  from (
    select d.status, count(*) as n
    from jsonb_to_recordset(p_results) as r (id bigint, claim_token uuid, outcome text, status integer, error text)
    cross join lateral (
      select ops.alert_delivery_done(r.id, r.claim_token, r.outcome, r.status, r.error,
                                     p_retry_base_seconds, p_max_attempts, p_now) as status
    ) d
    group by d.status
  ) x;
$$;
comment on function public.agent_alerts_record(jsonb, integer, integer, timestamptz) is
  'One agent-alerts cycle, second half: records each send [{id, claim_token, outcome: delivered|error|skipped, status, error}] with ops.alert_delivery_done. Returns how many rows ended in each status. Service role only.';

-- ---------------------------------------------------------------------------
-- Operators: a test notification, and what was delivered.
-- ---------------------------------------------------------------------------
create function ops.alert_test(p_destination text default null, p_now timestamptz default now())
returns setof ops.alert_outbox
language plpgsql
set search_path = ''
as $$
declare
  v_key text := 'agent-chat/test/' || gen_random_uuid();
begin
  if not exists (select 1 from ops.alert_destinations d where p_destination is null or d.destination = p_destination) then
    raise exception 'no destination %configured: the agent-alerts function reports the destinations it has secrets for at each cycle',
      coalesce(p_destination || ' ', '') using errcode = '22023';
  end if;
  return query
  insert into ops.alert_outbox (alert_id, state, destination, dedup_key, payload, next_attempt_at)
  select null, 'test', d.destination, v_key,
         jsonb_build_object('state', 'test', 'kind', 'test', 'subject', 'global', 'observed', 0, 'threshold', 0,
                            'details', jsonb_build_object('note', 'a test notification sent with ops.alert_test'),
                            'raised_at', p_now),
         p_now
  from ops.alert_destinations d
  where p_destination is null or d.destination = p_destination
  returning *;
end;
$$;
comment on function ops.alert_test(text, timestamptz) is
  'Queues a test notification for one reported destination (slack, pagerduty, webhook) or all of them; the next agent-alerts cycle sends it. CLI: alerts test [--destination].';

create view ops.open_alerts with (security_invoker = true) as
  select a.id, a.kind, a.subject, a.observed, a.threshold, a.raised_at, a.last_seen_at, a.details,
         a.acknowledged_at, a.acknowledged_by, m.muted_until,
         coalesce(d.delivery,
                  case when m.muted_until is not null then 'muted, not sent'
                       when not exists (select 1 from ops.alert_destinations) then 'recorded only, no destination'
                       else 'not sent' end) as delivery
  from ops.alert_events a
  cross join lateral (select ops.alert_muted_until(a.kind, a.subject) as muted_until) m
  left join lateral (
    select string_agg(
             o.destination || ' ' || case
               when o.status = 'pending' and o.attempts = 0 then 'queued'
               when o.status = 'pending' then format('retrying (%s attempts, %s)', o.attempts, coalesce(o.last_error, 'HTTP ' || o.last_status))
               when o.status = 'failed' then format('failed after %s attempts (%s)', o.attempts, coalesce(o.last_error, 'HTTP ' || o.last_status))
               else o.status end,
             ', ' order by o.destination) as delivery
    from (select distinct on (x.destination) x.*
          from ops.alert_outbox x where x.alert_id = a.id
          order by x.destination, x.id desc) o
  ) d on true
  where a.resolved_at is null
  order by a.raised_at;
comment on view ops.open_alerts is
  'Alerts raised by ops.check_alerts that have not cleared yet, with who acknowledged them, until when they are muted, and the delivery state of their latest notification per destination ("recorded only, no destination" when the agent-alerts function has none).';

create view ops.alert_delivery_status with (security_invoker = true) as
  select x.destination, d.reported_at,
         count(*) filter (where o.status = 'pending') as pending,
         count(*) filter (where o.status = 'delivered' and o.delivered_at > now() - interval '24 hours') as delivered_24h,
         count(*) filter (where o.status = 'failed') as failed,
         (select l.last_error from ops.alert_outbox l
          where l.destination = x.destination and l.last_error is not null order by l.id desc limit 1) as last_error
  from (values ('slack'), ('pagerduty'), ('webhook')) x (destination)
  left join ops.alert_destinations d on d.destination = x.destination
  left join ops.alert_outbox o on o.destination = x.destination
  group by x.destination, d.reported_at;
comment on view ops.alert_delivery_status is
  'Per destination: when the agent-alerts function last reported having it (NULL: not configured), notifications pending, delivered in the last 24 hours and failed, and the latest error.';

-- ---------------------------------------------------------------------------
-- Schedules.
-- ---------------------------------------------------------------------------
create function ops.schedule_alert_delivery(p_url text default null, p_key text default null)
returns text
language plpgsql
set search_path = ''
as $$
declare
  v_secret record;
  v_updated integer;
begin
  if not exists (select 1 from pg_extension where extname = 'pg_cron') then
    return 'not scheduled: enable pg_cron, pg_net and supabase_vault (Database → Extensions), then run this again';
  end if;
  -- The check records alerts (and queues their notifications) even without the function.
  perform cron.schedule('agent-chat-check-alerts', '* * * * *', 'select ops.check_alerts()');
  if (select count(*) from pg_extension where extname in ('pg_net', 'supabase_vault')) < 2 then
    return 'check scheduled; delivery not: enable pg_net and supabase_vault (Database → Extensions), then run this again';
  end if;
  if p_url is not null and p_url !~ '^https://' then
    raise exception 'the agent-alerts URL must be https://, got %', p_url using errcode = '22023';
  end if;
  -- The URL and key live in the Vault, never in the job's text.
  for v_secret in
    select * from (values ('agent_alerts_url', p_url), ('agent_alerts_key', p_key)) x (name, value)
    where x.value is not null
  loop
    execute 'select vault.update_secret(s.id, $2) from vault.secrets s where s.name = $1'
      using v_secret.name, v_secret.value;
    get diagnostics v_updated = row_count;  -- EXECUTE leaves FOUND alone
    if v_updated = 0 then
      execute 'select vault.create_secret($2, $1)' using v_secret.name, v_secret.value;
    end if;
  end loop;
  execute $sql$select cron.schedule('agent-chat-deliver-alerts', '* * * * *', $job$
    select net.http_post(
      url := (select decrypted_secret from vault.decrypted_secrets where name = 'agent_alerts_url'),
      headers := jsonb_build_object(
        'content-type', 'application/json',
        'authorization', 'Bearer ' || (select decrypted_secret from vault.decrypted_secrets where name = 'agent_alerts_key')),
      body := '{}'::jsonb,
      timeout_milliseconds := 55000)
  $job$)$sql$;
  return 'scheduled: agent-chat-deliver-alerts POSTs to agent-alerts every minute';
end;
$$;
comment on function ops.schedule_alert_delivery(text, text) is
  'Schedules pg_cron job agent-chat-check-alerts (ops.check_alerts every minute) and, with pg_net and supabase_vault, stores the agent-alerts URL and the service (or a secret) key in the Vault as agent_alerts_url and agent_alerts_key (when given) and schedules agent-chat-deliver-alerts: every minute, pg_net POSTs to the function with that key. Says what is missing instead. Run by the project owner (Studio SQL editor); see the runbook.';

-- Only where pg_cron is enabled (Database → Extensions on hosted Supabase);
-- the delivery job also needs pg_net and the Vault. Without them this does
-- nothing (and says so).
select ops.schedule_alert_delivery();

-- ---------------------------------------------------------------------------
-- Privileges of every function and view above, one statement each (checked
-- by supabase/tests/database/004_privileges_inventory.test.sql): service_role
-- alone may execute or read them (ops.schedule_alert_delivery also needs the
-- rights on cron and the Vault that the project owner has).
-- ---------------------------------------------------------------------------
revoke execute on function
  ops.alert_enqueue(ops.alert_events, text, timestamptz, text),
  ops.check_alerts(timestamptz),
  ops.alert_claim(text[], integer, integer, timestamptz),
  ops.alert_delivery_failed(ops.alert_outbox, timestamptz),
  ops.alert_delivery_done(bigint, uuid, text, integer, text, integer, integer, timestamptz),
  public.agent_alerts_begin_cycle(text[], integer, integer, timestamptz),
  public.agent_alerts_record(jsonb, integer, integer, timestamptz),
  ops.alert_test(text, timestamptz),
  ops.schedule_alert_delivery(text, text)
from public, anon, authenticated;
grant execute on function
  ops.alert_enqueue(ops.alert_events, text, timestamptz, text),
  ops.check_alerts(timestamptz),
  ops.alert_claim(text[], integer, integer, timestamptz),
  ops.alert_delivery_failed(ops.alert_outbox, timestamptz),
  ops.alert_delivery_done(bigint, uuid, text, integer, text, integer, integer, timestamptz),
  public.agent_alerts_begin_cycle(text[], integer, integer, timestamptz),
  public.agent_alerts_record(jsonb, integer, integer, timestamptz),
  ops.alert_test(text, timestamptz),
  ops.schedule_alert_delivery(text, text)
to service_role;
grant select on ops.open_alerts, ops.alert_delivery_status to service_role;
