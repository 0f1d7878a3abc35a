-- agent-chat: alert conditions, and acknowledging and muting alerts.
--
-- ops.evaluate_alerts says which conditions are true at a moment: the
-- success rate (global, and per org), budgets reached and early budget
-- warnings, and optionally the p95 latency. Recording them and notifying
-- people (ops.check_alerts, the outbox, the agent-alerts Edge Function) is
-- 20251231120750_ai_agent_alert_delivery. An operator acknowledges an open
-- alert (ops.alert_ack) or mutes a kind and subject until a time
-- (ops.alert_mute): while muted, a condition raises no new event and no
-- notification goes out, so a flapping success rate or a known budget overrun
-- does not re-fire.

-- ---------------------------------------------------------------------------
-- Alert conditions, evaluated live.
-- ---------------------------------------------------------------------------
create function ops.evaluate_alerts(
  p_now timestamptz default now(),
  p_min_requests integer default null,
  p_success_threshold numeric default null
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
-- No JIT: the planner's estimates for the nested report functions are far
-- above what they read, and compiling took 0.7 s of a 10 ms evaluation.
set jit = off
as $$
  -- The trailing 15 minutes, (p_now - 15 minutes, p_now], from the rollup and
  -- the raw tail (ops.usage_report over ops.usage_cells): evaluated every
  -- minute, this covers any 15-minute window to the minute.
  with settings as (
    select coalesce(p_min_requests, s.min_requests) as min_requests,
           coalesce(p_success_threshold, s.success_threshold) as success_threshold,
           s.budget_warning_ratios, s.latency_p95_ms
    from ops.alert_settings s
  ),
  win as (
    select p_now - interval '15 minutes' + interval '1 microsecond' as from_at,
           p_now + interval '1 microsecond' as to_at
  ),
  -- Global (one row, org_id NULL) and per org (without percentiles: only the
  -- global p95 is a condition).
  rates as (
    select true as is_global, r.*
    from win, ops.usage_report(win.from_at, win.to_at, null, null, false) r
    union all
    select false, r.*
    from win, ops.usage_report(win.from_at, win.to_at, null, null, true, false) r
    where r.org_id is not null
  ),
  budgets as (
    select b.org_id, b.monthly_usd, b.spent_usd as usd,
           case when b.org_id is null then 'global' else 'org:' || b.org_id end as subject,
           (select max(r) from settings, unnest(settings.budget_warning_ratios) r
            where b.spent_usd >= b.monthly_usd * r) as warning_ratio
    from ops.budget_status(p_now) b
  )
  select 'success_rate', case when r.is_global then 'global' else 'org:' || r.org_id end,
         p_now - interval '15 minutes', p_now, r.success_rate, st.success_threshold,
         jsonb_build_object('org_id', r.org_id, 'served', r.served, 'succeeded', r.succeeded,
                            'failures_by_code',
                            (select coalesce(jsonb_object_agg(f.error_code, f.requests), '{}'::jsonb)
                             from win, ops.errors_by_code(win.from_at, win.to_at, r.org_id) f
                             where f.served))
  from rates r
  cross join settings st
  where r.served >= st.min_requests and r.succeeded::numeric / r.served < st.success_threshold
  union all
  select 'budget', b.subject, date_trunc('month', p_now, 'UTC'), p_now, b.usd, b.monthly_usd,
         jsonb_build_object('org_id', b.org_id, 'budget_usd', b.monthly_usd, 'spent_usd', b.usd)
  from budgets b
  where b.usd > b.monthly_usd
  union all
  select 'budget_warning', b.subject, date_trunc('month', p_now, 'UTC'), p_now, b.usd,
         round(b.monthly_usd * b.warning_ratio, 6),
         jsonb_build_object('org_id', b.org_id, 'budget_usd', b.monthly_usd, 'spent_usd', b.usd,
                            'ratio', b.warning_ratio)
  from budgets b
  where b.warning_ratio is not null
  union all
  select 'latency_p95', 'global', p_now - interval '15 minutes', p_now, r.latency_p95_ms, st.latency_p95_ms,
         jsonb_build_object('answered', r.succeeded, 'p95_ms', r.latency_p95_ms)
  from rates r
  cross join settings st
  where r.is_global and st.latency_p95_ms is not null and r.succeeded >= st.min_requests
    and r.latency_p95_ms > st.latency_p95_ms
  union all
  -- A reported model name without a price in the last hour: charged at the
  -- requested model's price (metadata.priced_as) or, without one, at $0.
  -- Either way the operator adds the name to ops.model_prices. The billed
  -- requests per model come from the rollup's cells and the raw tail; the
  -- price is looked up once per model (offset 0 keeps the lookup out of the
  -- scan), and the raw rows are read only for a model without one.
  select 'unpriced_model', 'model:' || u.model, p_now - interval '1 hour', p_now,
         u.events, 0,
         jsonb_build_object('model', u.model, 'events', u.events, 'priced_as',
                            (select min(e.metadata ->> 'priced_as') from public.agent_usage_events e
                             where e.model = u.model and e.metadata ? 'priced_as'
                               and e.created_at > p_now - interval '1 hour' and e.created_at <= p_now))
  from (
    select c.model, sum(c.billed_requests) as events
    from ops.usage_cells(p_now - interval '1 hour' + interval '1 microsecond', p_now + interval '1 microsecond',
                         null, interval '1 day', 'cell') c
    where c.billed_requests > 0
    group by c.model
    offset 0
  ) u
  where ops.event_cost_usd(u.model, p_now, 0, 0, 0) is null;
$$;
comment on function ops.evaluate_alerts(timestamptz, integer, numeric) is
  'Alert conditions true at p_now, with the thresholds of ops.alert_settings (p_min_requests and p_success_threshold override its success-rate ones): success rate below the threshold (98%) over the trailing 15 minutes, globally and per org (each with at least min_requests served; requests counted with sum(event_count)); month-to-date spend over a global or per-org budget (budget) and at or over a share of it (budget_warning, the highest of budget_warning_ratios reached; it stays while the budget alert holds); optionally the p95 latency of answered requests over latency_p95_ms; a reported model name without a price in ops.model_prices in the last hour (unpriced_model, subject model:<name>).';

create view ops.active_alerts with (security_invoker = true) as
  select * from ops.evaluate_alerts();
comment on view ops.active_alerts is 'Alert conditions true right now (see ops.evaluate_alerts).';

create function ops.alert_muted_until(p_kind text, p_subject text, p_now timestamptz default now())
returns timestamptz
language sql
stable
set search_path = ''
as $$
  select max(m.muted_until)
  from ops.alert_mutes m
  where m.subject = p_subject and m.muted_until > p_now
    and (m.kind = p_kind or (m.kind = 'budget' and p_kind = 'budget_warning'));
$$;
comment on function ops.alert_muted_until(text, text, timestamptz) is
  'Until when alerts of this kind and subject are muted at p_now (NULL: not muted). A mute of a budget also mutes its early warnings.';

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
  if p_kind is null or p_kind not in ('success_rate', 'budget', 'budget_warning', 'latency_p95', 'delivery_failed', 'unpriced_model') then
    raise exception 'kind must be success_rate, budget, budget_warning, latency_p95, delivery_failed or unpriced_model, got %',
      coalesce(p_kind, 'NULL') using errcode = '22023';
  end if;
  -- The subject as alerts name it: global, org: and the org id in its
  -- canonical (lowercase) form whatever case the operator typed, a
  -- destination (delivery_failed), or model: and a name as reported
  -- (unpriced_model).
  if p_kind = 'unpriced_model' then
    v_subject := btrim(p_subject);
    if v_subject is null or v_subject !~ '^model:.+' then
      raise exception 'subject must be model:<name>, got %', coalesce(p_subject, 'NULL') using errcode = '22023';
    end if;
  elsif v_subject is null or v_subject !~ '^(global|org:[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}|destination:(slack|pagerduty|webhook))$' then
    raise exception 'subject must be global, org:<uuid> or destination:<slack|pagerduty|webhook>, got %',
      coalesce(p_subject, 'NULL') using errcode = '22023';
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
  'Mutes alerts of one kind (success_rate, budget, budget_warning, latency_p95, delivery_failed, unpriced_model) and subject (global, org:<uuid>, destination:<name>, model:<name>) until p_until: ops.check_alerts raises no new event and sends no notification for them meanwhile (a budget''s mute covers its warnings too). Audited. CLI: alerts mute <kind> <subject> --until --by.';

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

-- ---------------------------------------------------------------------------
-- Privileges of every function and view above, one statement each (checked
-- by supabase/tests/database/004_privileges_inventory.test.sql): service_role
-- alone may execute or read them.
-- ---------------------------------------------------------------------------
revoke execute on function
  ops.evaluate_alerts(timestamptz, integer, numeric),
  ops.alert_muted_until(text, text, timestamptz),
  ops.alert_ack(bigint, text, timestamptz),
  ops.alert_mute(text, text, timestamptz, text, text, timestamptz),
  ops.alert_unmute(text, text, text)
from public, anon, authenticated;
grant execute on function
  ops.evaluate_alerts(timestamptz, integer, numeric),
  ops.alert_muted_until(text, text, timestamptz),
  ops.alert_ack(bigint, text, timestamptz),
  ops.alert_mute(text, text, timestamptz, text, text, timestamptz),
  ops.alert_unmute(text, text, text)
to service_role;
grant select on ops.active_alerts to service_role;
