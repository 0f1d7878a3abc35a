-- agent-chat: operator functions, the ones the runbook and the operator CLI
-- (npm run ops) call: inspect and clear rate-limit buckets, add, expire and
-- list opt-outs, show a stored session, tenant policies, switches and
-- budgets (validated and audited in ops.policy_audit), the per-org
-- dashboard. Each takes what a CLI flag would give
-- and returns what it should print, so a CLI command is one call.
-- service_role only (Supabase Studio's SQL editor runs as postgres).

-- ---------------------------------------------------------------------------
-- Rate-limit inspection
-- ---------------------------------------------------------------------------
create view ops.rate_limit_status with (security_invoker = true) as
  select
    r.bucket_key,
    split_part(r.bucket_key, ':', 1) as scope,
    r.max_requests,
    r.window_seconds,
    u.used,
    -- A retired row (an earlier layout of a sharded org: bucket) admits nothing.
    case when r.retired then 0 else greatest(r.max_requests - u.used, 0) end as remaining,
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
  'Each bucket now: used and remaining in its window, when the oldest counted slot frees up (next_slot_frees_at) and when the bucket is empty (empty_at). A sharded org: bucket is its rows org:<id>#K.i; a retired row (an earlier K) shows remaining 0.';

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
     -- A sharded org: bucket's rows, org:<id>#K.i, under its key.
     or starts_with(s.bucket_key, p_bucket_key || '#')
     or (right(p_bucket_key, 1) = '*' and starts_with(s.bucket_key, left(p_bucket_key, -1)))
  order by s.bucket_key;
$$;
comment on function ops.bucket_status(text) is
  'One rate-limit bucket as ops.rate_limit_status shows it (used, remaining, when it frees up), with the rows of a sharded org: bucket (org:<id>#K.i; a retired one, of an earlier K, shows remaining 0); a trailing * lists every bucket with that prefix, e.g. ''org:*''.';

create function ops.clear_rate_limit(p_bucket_key text)
returns integer
language plpgsql
set search_path = ''
as $$
declare
  v_deleted integer;
begin
  if p_bucket_key is null or p_bucket_key !~ '^(org|user|ip|channel):.+' then
    raise exception 'bucket key must look like org:<id>, user:<id>, ip:<address> or channel:<name>, got %', coalesce(p_bucket_key, 'NULL')
      using errcode = '22023';
  end if;
  -- A sharded org: bucket (org_bucket_shards) is its rows org:<id>#K.0 ..
  -- #K.K-1 (and the retired rows of earlier layouts); its live rows are
  -- emptied, the retired ones kept so a turn that read an old K still refuses.
  update ops.rate_limits r
  set slot_ids = '{}', slot_counts = '{}', slot_total = 0, updated_at = now()
  where starts_with(r.bucket_key, p_bucket_key || '#') and r.bucket_key ~ '^org:[^#]+#[0-9]+\.[0-9]+$' and not r.retired;
  get diagnostics v_deleted = row_count;
  delete from ops.rate_limits r where r.bucket_key = p_bucket_key and not r.retired;
  if found then
    v_deleted := v_deleted + 1;
  end if;
  return v_deleted;
end;
$$;
comment on function ops.clear_rate_limit(text) is
  'Empties one rate-limit bucket (deletes its row, or empties the rows of a sharded org: bucket); returns the rows emptied.';

-- ---------------------------------------------------------------------------
-- Opt-outs
-- ---------------------------------------------------------------------------
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
  -- Requests carry lowercase channels: 'SMS ' from a form means sms.
  v_channel text := lower(btrim(p_channel));
begin
  if p_org_id is null then
    raise exception 'org_id is required' using errcode = '22023';
  end if;
  if v_channel is not null and v_channel !~ '^[a-z][a-z0-9_-]{0,31}$' then
    raise exception 'channel must be a short lowercase token (letters, digits, _ and -, at most 32), got %', p_channel
      using errcode = '22023';
  end if;
  insert into public.agent_opt_outs (org_id, user_id, channel, reason, created_by, expires_at)
  values (p_org_id, p_user_id, v_channel, p_reason, coalesce(p_created_by, session_user::text), p_expires_at)
  returning * into v_row;
  return v_row;
end;
$$;
comment on function ops.add_opt_out(uuid, uuid, text, text, text, timestamptz) is
  'Registers an opt-out: user NULL = whole org, channel NULL = every channel (case and surrounding blanks are normalised: '' SMS'' is sms), expires_at NULL = until expired.';

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

-- ---------------------------------------------------------------------------
-- Tenant policies, switches and budgets. Scope: p_org_id NULL = global,
-- p_channel NULL = every channel. Every change is audited in
-- ops.policy_audit (actor = p_actor, else current_user) and applies to the
-- next request.
-- ---------------------------------------------------------------------------
create function ops.policy_fields()
returns text[]
language sql
immutable
set search_path = ''
as $$
  select array[
    'enabled', 'disabled_message',
    'org_max_requests', 'org_window_seconds', 'user_max_requests', 'user_window_seconds',
    'ip_max_requests', 'ip_window_seconds', 'channel_max_requests', 'channel_window_seconds',
    'org_tokens_per_minute', 'org_tokens_per_day', 'user_tokens_per_minute', 'user_tokens_per_day',
    'org_bucket_shards', 'model', 'model_fallbacks', 'note'];
$$;
comment on function ops.policy_fields() is
  'The settable fields of ops.agent_policies, the one list of them: what ops.policy_set accepts and writes and ops.policy_show reports.';

-- security definer: the audit table takes rows only from here and from the
-- triggers below, so that no caller (service_role included) can forge one.
create function ops.audit(p_actor text, p_action text, p_org_id uuid, p_channel text, p_old jsonb, p_new jsonb)
returns void
language plpgsql
security definer
set search_path = ''
as $$
begin
  insert into ops.policy_audit (actor, action, org_id, channel, old_value, new_value)
  values (coalesce(nullif(btrim(p_actor), ''), session_user::text), p_action, p_org_id, p_channel, p_old, p_new);
  -- The operator function's change is recorded: direct changes are audited again.
  perform set_config('agent_chat.operator_change', 'off', true);
end;
$$;
comment on function ops.audit(text, text, uuid, text, jsonb, jsonb) is 'One ops.policy_audit row: who (p_actor, else the session user), what, old → new. Called by the operator functions after their change.';

-- The operator functions say so before they change a row (their own audit
-- row follows); any other change of these tables is recorded by the trigger.
create function ops.operator_change()
returns void
language sql
set search_path = ''
as $$
  select set_config('agent_chat.operator_change', 'on', true);
$$;
comment on function ops.operator_change() is 'Marks the change that follows as an operator function''s (audited by it with its action and actor), until ops.audit records it.';

-- security definer: writes the audit row that the caller may not write itself.
create function ops.audit_direct_change()
returns trigger
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_row jsonb := coalesce(to_jsonb(new), to_jsonb(old));
begin
  if current_setting('agent_chat.operator_change', true) is distinct from 'on' then
    insert into ops.policy_audit (actor, action, org_id, channel, old_value, new_value)
    values (session_user::text, 'direct_' || lower(tg_op) || ' on ' || tg_table_name,
            (v_row ->> 'org_id')::uuid, v_row ->> 'channel',
            case when tg_op <> 'INSERT' then to_jsonb(old) end,
            case when tg_op <> 'DELETE' then to_jsonb(new) end);
  end if;
  return null;
end;
$$;
comment on function ops.audit_direct_change() is 'Audits a change of ops.agent_policies, ops.budgets or ops.alert_mutes made without the operator functions (plain SQL in Studio, say).';
create trigger agent_policies_audit after insert or update or delete on ops.agent_policies
  for each row execute function ops.audit_direct_change();
create trigger budgets_audit after insert or update or delete on ops.budgets
  for each row execute function ops.audit_direct_change();
create trigger alert_mutes_audit after insert or update or delete on ops.alert_mutes
  for each row execute function ops.audit_direct_change();

create function ops.policy_set(
  p_org_id uuid,
  p_channel text,
  p_settings jsonb,
  p_actor text default null
)
returns ops.agent_policies
language plpgsql
set search_path = ''
as $$
declare
  v_zero constant uuid := '00000000-0000-0000-0000-000000000000';
  v_channel text := lower(btrim(p_channel));
  v_old ops.agent_policies;
  v_new ops.agent_policies;
  v_unknown text;
  v_columns text;
  v_values text;
  v_updates text;
begin
  perform ops.operator_change();
  if p_settings is null or jsonb_typeof(p_settings) <> 'object' or p_settings = '{}'::jsonb then
    raise exception 'settings must be a JSON object of fields to set (null clears one): %', array_to_string(ops.policy_fields(), ', ')
      using errcode = '22023';
  end if;
  select string_agg(k, ', ') into v_unknown
  from jsonb_object_keys(p_settings) k where not (k = any (ops.policy_fields()));
  if v_unknown is not null then
    raise exception 'unknown policy field(s): % (known: %)', v_unknown, array_to_string(ops.policy_fields(), ', ')
      using errcode = '22023';
  end if;
  if v_channel is not null and v_channel !~ '^[a-z][a-z0-9_-]{0,31}$' then
    raise exception 'channel must be a short lowercase token, got %', p_channel using errcode = '22023';
  end if;

  select p.* into v_old from ops.agent_policies p
  where coalesce(p.org_id, v_zero) = coalesce(p_org_id, v_zero) and coalesce(p.channel, '') = coalesce(v_channel, '')
  for update;
  if v_old.id is null then
    v_new := jsonb_populate_record(null::ops.agent_policies, jsonb_build_object('org_id', p_org_id, 'channel', v_channel) || p_settings);
  else
    v_new := jsonb_populate_record(v_old, p_settings);
  end if;
  -- Written field by field from ops.policy_fields(), the one list of them
  -- (080_policies ties it to the table's columns).
  select string_agg(format('%I', f), ', '), string_agg(format('($1).%I', f), ', '),
         string_agg(format('%1$I = excluded.%1$I', f), ', ')
  into v_columns, v_values, v_updates
  from unnest(ops.policy_fields()) f;
  execute format(
    'insert into ops.agent_policies as p (org_id, channel, %s, updated_by, created_at, updated_at)
     values ($2, $3, %s, $4, now(), now())
     on conflict ((coalesce(org_id, %L::uuid)), (coalesce(channel, %L))) do update
     set %s, updated_by = excluded.updated_by, updated_at = now()
     returning p.*', v_columns, v_values, v_zero, '', v_updates)
  using v_new, p_org_id, v_channel, coalesce(nullif(btrim(p_actor), ''), current_user::text)
  into v_new;
  perform ops.audit(p_actor, 'policy_set', p_org_id, v_channel, to_jsonb(v_old), to_jsonb(v_new));
  return v_new;
end;
$$;
comment on function ops.policy_set(uuid, text, jsonb, text) is
  'Sets fields of one policy scope (org NULL = global, channel NULL = every channel) from a JSON object, e.g. ''{"org_max_requests": 600, "user_tokens_per_day": 200000}''; a JSON null clears a field (back to the global row or the environment). Unknown fields and invalid values are errors; audited; applies to the next request. CLI: policy set.';

create function ops.policy_clear(p_org_id uuid, p_channel text default null, p_actor text default null)
returns boolean
language plpgsql
set search_path = ''
as $$
declare
  v_zero constant uuid := '00000000-0000-0000-0000-000000000000';
  v_old ops.agent_policies;
begin
  perform ops.operator_change();
  delete from ops.agent_policies p
  where coalesce(p.org_id, v_zero) = coalesce(p_org_id, v_zero)
    and coalesce(p.channel, '') = coalesce(lower(btrim(p_channel)), '')
  returning p.* into v_old;
  if not found then
    return false;
  end if;
  perform ops.audit(p_actor, 'policy_clear', p_org_id, v_old.channel, to_jsonb(v_old), null);
  return true;
end;
$$;
comment on function ops.policy_clear(uuid, text, text) is
  'Deletes one policy scope (its limits fall back to the global row, then the environment); true if it existed. Audited. CLI: policy clear.';

create function ops.switch_off(
  p_org_id uuid default null,
  p_message text default null,
  p_actor text default null,
  p_channel text default null
)
returns ops.agent_policies
language sql
set search_path = ''
as $$
  select ops.policy_set(p_org_id, p_channel,
    jsonb_build_object('enabled', false,
      -- A blank message would leave users with nothing to go on: the default then.
      'disabled_message', coalesce(nullif(btrim(p_message), ''), 'The assistant is not available right now. Please contact your group''s officers or support.')),
    p_actor);
$$;
comment on function ops.switch_off(uuid, text, text, text) is
  'Turns the assistant off (503 assistant_disabled with p_message) for everyone (p_org_id NULL), one tenant, or one channel of either. Takes effect on the next request. CLI: switch off [--org] [--channel] --message.';

create function ops.switch_on(p_org_id uuid default null, p_actor text default null, p_channel text default null)
returns ops.agent_policies
language sql
set search_path = ''
as $$
  select ops.policy_set(p_org_id, p_channel, '{"enabled": null, "disabled_message": null}'::jsonb, p_actor);
$$;
comment on function ops.switch_on(uuid, text, text) is
  'Turns the switch of this scope back on. The assistant answers where no scope on the way (global, channel, tenant, tenant+channel) is off. CLI: switch on [--org] [--channel].';

create function ops.budget_set(
  p_org_id uuid,
  p_monthly_usd numeric,
  p_mode text default 'alert',
  p_actor text default null,
  p_note text default null
)
returns ops.budgets
language plpgsql
set search_path = ''
as $$
declare
  v_old ops.budgets;
  v_new ops.budgets;
begin
  perform ops.operator_change();
  if p_monthly_usd is null or p_monthly_usd <= 0 then
    raise exception 'monthly_usd must be a positive amount, got %', coalesce(p_monthly_usd::text, 'NULL') using errcode = '22023';
  end if;
  if p_mode is null or p_mode not in ('alert', 'enforce') then
    raise exception 'mode must be alert or enforce, got %', coalesce(p_mode, 'NULL') using errcode = '22023';
  end if;
  select b.* into v_old from ops.budgets b where b.org_id is not distinct from p_org_id for update;
  insert into ops.budgets as b (org_id, monthly_usd, mode, note)
  values (p_org_id, p_monthly_usd, p_mode, p_note)
  on conflict ((coalesce(org_id, '00000000-0000-0000-0000-000000000000'::uuid))) do update
  set monthly_usd = excluded.monthly_usd, mode = excluded.mode, note = coalesce(excluded.note, b.note), updated_at = now()
  returning b.* into v_new;
  perform ops.audit(p_actor, 'budget_set', p_org_id, null, to_jsonb(v_old), to_jsonb(v_new));
  return v_new;
end;
$$;
comment on function ops.budget_set(uuid, numeric, text, text, text) is
  'Sets the monthly budget in USD of one org (or the global one, p_org_id NULL): mode alert raises a budget alert, enforce also refuses new turns (402 budget_exceeded) once spend plus open reservations reach it. Audited. CLI: budget set [--org] --usd --mode.';

create function ops.budget_clear(p_org_id uuid, p_actor text default null)
returns boolean
language plpgsql
set search_path = ''
as $$
declare
  v_old ops.budgets;
begin
  perform ops.operator_change();
  delete from ops.budgets b where b.org_id is not distinct from p_org_id returning b.* into v_old;
  if not found then
    return false;
  end if;
  perform ops.audit(p_actor, 'budget_clear', p_org_id, null, to_jsonb(v_old), null);
  return true;
end;
$$;
comment on function ops.budget_clear(uuid, text) is 'Removes the budget of one org (or the global one); true if it existed. Audited. CLI: budget clear [--org].';

create function ops.policy_show(p_org_id uuid default null, p_channel text default null, p_now timestamptz default now())
returns jsonb
language sql
stable
set search_path = ''
as $$
  with rows as (
    select p.* from ops.agent_policies p
    where (p.org_id is null or p.org_id = p_org_id)
      and (p.channel is null or p.channel = lower(btrim(p_channel)))
  ),
  g as (select * from rows where org_id is null and channel is null),
  o as (select * from rows where org_id is not null and channel is null),
  f as (select unnest(ops.policy_fields()) as field)
  select jsonb_build_object(
    'org_id', p_org_id,
    'channel', lower(btrim(p_channel)),
    'scopes', coalesce((select jsonb_agg(to_jsonb(r) order by r.org_id nulls first, r.channel nulls first) from rows r), '[]'::jsonb),
    'effective', (
      select jsonb_object_agg(f.field, jsonb_build_object(
        'value', coalesce((select to_jsonb(o) -> f.field from o), (select to_jsonb(g) -> f.field from g)),
        'from', case when (select to_jsonb(o) ->> f.field from o) is not null then 'org'
                     when (select to_jsonb(g) ->> f.field from g) is not null then 'global'
                     else 'environment' end))
      from f where f.field not in ('note', 'channel_max_requests', 'channel_window_seconds')),
    'enabled', not exists (select 1 from rows r where r.enabled is false),
    'budgets', coalesce((select jsonb_agg(to_jsonb(b) order by b.org_id nulls first) from ops.budgets b
                         where b.org_id is null or b.org_id = p_org_id), '[]'::jsonb),
    'month_to_date_usd', (select round(coalesce(sum(c.usd), 0), 6) from ops.spend_counters c
                          where c.org_id = p_org_id and c.month = date_trunc('month', p_now at time zone 'UTC')::date)
  );
$$;
comment on function ops.policy_show(uuid, text, timestamptz) is
  'The policy rows that apply to an org (and a channel), each field''s effective value and where it comes from (org, global, environment = the AI_AGENT_RATE_LIMIT_* default), whether the assistant is on, the budgets and the month-to-date spend. CLI: policy show [--org] [--channel].';

-- Per-org dashboard: every org with a policy, a budget or spend this month.
create view ops.org_dashboard with (security_invoker = true) as
  with orgs as (
    select p.org_id from ops.agent_policies p where p.org_id is not null
    union select b.org_id from ops.budgets b where b.org_id is not null
    union select c.org_id from ops.spend_counters c where c.month = date_trunc('month', now() at time zone 'UTC')::date
  ),
  g as (select * from ops.agent_policies where org_id is null and channel is null)
  select
    o.org_id,
    not exists (select 1 from ops.agent_policies p where (p.org_id = o.org_id or p.org_id is null) and p.channel is null and p.enabled is false)
      as enabled,
    coalesce(op.disabled_message, (select g.disabled_message from g)) as disabled_message,
    coalesce(op.org_max_requests, (select g.org_max_requests from g)) as org_max_requests,
    coalesce(op.user_max_requests, (select g.user_max_requests from g)) as user_max_requests,
    coalesce(op.ip_max_requests, (select g.ip_max_requests from g)) as ip_max_requests,
    rl.used as org_bucket_used,
    rl.remaining as org_bucket_remaining,
    rl.max_requests as org_bucket_limit,
    coalesce(op.org_tokens_per_minute, (select g.org_tokens_per_minute from g)) as org_tokens_per_minute,
    ops.tokens_used('org:' || o.org_id || ':minute', 60) as org_tokens_last_minute,
    coalesce(op.org_tokens_per_day, (select g.org_tokens_per_day from g)) as org_tokens_per_day,
    ops.tokens_used('org:' || o.org_id || ':day', 86400) as org_tokens_last_day,
    coalesce(r.tokens, 0) as reserved_tokens,
    round(coalesce(sc.usd, 0), 6) as month_to_date_usd,
    round(coalesce(r.usd, 0), 6) as reserved_usd,
    b.monthly_usd as budget_usd,
    b.mode as budget_mode,
    round((coalesce(sc.usd, 0) + coalesce(r.usd, 0)) / b.monthly_usd, 4) as budget_used_ratio
  from orgs o
  left join ops.agent_policies op on op.org_id = o.org_id and op.channel is null
  left join ops.rate_limit_status rl on rl.bucket_key = 'org:' || o.org_id
  left join ops.budgets b on b.org_id = o.org_id
  left join lateral (
    select sum(c.usd) as usd from ops.spend_counters c
    where c.org_id = o.org_id and c.month = date_trunc('month', now() at time zone 'UTC')::date
  ) sc on true
  left join lateral (
    select sum(t.tokens) as tokens, sum(t.usd) as usd from ops.token_reservations t
    where t.org_id = o.org_id and t.expires_at > now()
  ) r on true;
comment on view ops.org_dashboard is
  'Per org with a policy, a budget or spend this month: switch and message, effective request limits (NULL = the environment default), the org: bucket now, token quotas against settled tokens of the last minute and day and open reservations, month-to-date spend (+ reservations) against the budget and its mode.';

-- ---------------------------------------------------------------------------
-- Sessions (the purge is in 20251231120800_ai_agent_members_data)
-- ---------------------------------------------------------------------------
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

-- ---------------------------------------------------------------------------
-- Hot tenants sharded automatically: every minute (pg_cron) the org:
-- buckets admitting at least p_min_rate turns a second get K =
-- p_rate_per_shard turns a second per row (a power of two, at most 64),
-- through ops.policy_set (audited, actor ops.autoshard_org_buckets), and an
-- org the job sharded goes back down, to the rows its rate needs, once that
-- is a quarter of its rows or fewer, or one row under the threshold. A K an operator set is never touched: the job manages an
-- org only while the org's K is the one it set (ops.autoshard_state).
-- Changing K is exact (ops.reshard_org_bucket).
-- ---------------------------------------------------------------------------
create table ops.autoshard_state (
  org_id uuid primary key,
  shards integer not null check (shards between 1 and 64),
  rate_per_second numeric not null,
  updated_at timestamptz not null default now()
);
comment on table ops.autoshard_state is
  'The K ops.autoshard_org_buckets set per org and the rate it saw. The job manages an org''s org_bucket_shards only while it equals shards here (an operator''s change takes the org over).';
alter table ops.autoshard_state enable row level security;
revoke all on table ops.autoshard_state from public, anon, authenticated;
grant select on table ops.autoshard_state to service_role;

create function ops.autoshard_org_buckets(
  p_min_rate numeric default 100,
  p_rate_per_shard numeric default 50,
  p_now timestamptz default now()
)
returns table (org_id uuid, rate_per_second numeric, shards_before integer, shards_after integer)
language plpgsql
set search_path = ''
as $$
declare
  v_row record;
begin
  if coalesce(p_min_rate, 0) <= 0 or coalesce(p_rate_per_shard, 0) <= 0 then
    raise exception 'p_min_rate and p_rate_per_shard must be positive' using errcode = '22023';
  end if;
  for v_row in
    with rates as (
      -- Admissions in the window of every live org: row (one row or shards), per second.
      select split_part(split_part(r.bucket_key, ':', 2), '#', 1)::uuid as org,
             sum(u.used)::numeric / max(r.window_seconds) as rate
      from ops.rate_limits r
      cross join lateral (
        select coalesce(sum(s.n), 0) as used
        from unnest(r.slot_ids, r.slot_counts) as s (id, n)
        where s.id >= ((extract(epoch from p_now) * 1000)::bigint - r.window_seconds::bigint * 1000) / r.slot_ms
      ) u
      where r.bucket_key like 'org:%' and not r.retired
        and split_part(split_part(r.bucket_key, ':', 2), '#', 1) ~ '^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$'
      group by 1
    )
    select x.org, round(x.rate, 1) as rate, x.current, t.target
    from (
      select r.org, r.rate,
             coalesce((select p.org_bucket_shards from ops.agent_policies p where p.org_id = r.org and p.channel is null),
                      (select p.org_bucket_shards from ops.agent_policies p where p.org_id is null and p.channel is null), 1) as current,
             (select p.org_bucket_shards from ops.agent_policies p where p.org_id = r.org and p.channel is null) as own,
             (select a.shards from ops.autoshard_state a where a.org_id = r.org) as managed
      from rates r
    ) x
    -- The rows the rate needs (p_rate_per_shard a row, a power of two).
    cross join lateral (
      select least(64, power(2, ceil(log(2, greatest(x.rate / p_rate_per_shard, 1)))))::integer as target
    ) t
    -- Orgs without a K of their own, or with the K this job set: up when
    -- over the threshold and they need more rows; down, to the rows the
    -- rate needs, when a quarter of theirs would do or, under the threshold,
    -- one row does. An org just under the threshold keeps the rows its rate
    -- needs, so a rate hovering there does not flap between 1 and K.
    where (x.own is null or x.own = x.managed)
      and ((x.rate >= p_min_rate and t.target > x.current)
           or (x.managed is not null and t.target < x.current
               and (t.target * 4 <= x.current or (x.rate < p_min_rate and t.target = 1))))
    order by 1
  loop
    perform ops.policy_set(v_row.org, null, jsonb_build_object('org_bucket_shards', v_row.target),
                           'ops.autoshard_org_buckets');
    insert into ops.autoshard_state as a (org_id, shards, rate_per_second, updated_at)
    values (v_row.org, v_row.target, v_row.rate, p_now)
    on conflict on constraint autoshard_state_pkey do update
    set shards = excluded.shards, rate_per_second = excluded.rate_per_second, updated_at = excluded.updated_at;
    org_id := v_row.org;
    rate_per_second := v_row.rate;
    shards_before := v_row.current;
    shards_after := v_row.target;
    return next;
  end loop;
end;
$$;
comment on function ops.autoshard_org_buckets(numeric, numeric, timestamptz) is
  'Shards hot tenants'' org: buckets: an org admitting at least p_min_rate turns/s (over its window) gets org_bucket_shards = p_rate_per_shard turns/s per row (a power of two, at most 64), and goes back down to the rows its rate needs when a quarter of its rows would do (or one row, under the threshold), so a rate hovering at the threshold does not flap; never touches a K an operator set. pg_cron runs it every minute. Returns the orgs changed.';

-- ---------------------------------------------------------------------------
-- Privileges of every function and view above, one statement each (checked
-- by supabase/tests/database/004_privileges_inventory.test.sql): service_role
-- alone may execute or read them.
-- ---------------------------------------------------------------------------
revoke execute on function
  ops.bucket_status(text),
  ops.clear_rate_limit(text),
  ops.add_opt_out(uuid, uuid, text, text, text, timestamptz),
  ops.expire_opt_out(uuid, text, timestamptz),
  ops.list_opt_outs(uuid, boolean, timestamptz),
  ops.policy_fields(),
  ops.operator_change(),
  ops.audit_direct_change(),
  ops.audit(text, text, uuid, text, jsonb, jsonb),
  ops.policy_set(uuid, text, jsonb, text),
  ops.policy_clear(uuid, text, text),
  ops.switch_off(uuid, text, text, text),
  ops.switch_on(uuid, text, text),
  ops.budget_set(uuid, numeric, text, text, text),
  ops.budget_clear(uuid, text),
  ops.policy_show(uuid, text, timestamptz),
  ops.session_show(uuid, timestamptz),
  ops.autoshard_org_buckets(numeric, numeric, timestamptz)
from public, anon, authenticated;
grant execute on function
  ops.bucket_status(text),
  ops.clear_rate_limit(text),
  ops.add_opt_out(uuid, uuid, text, text, text, timestamptz),
  ops.expire_opt_out(uuid, text, timestamptz),
  ops.list_opt_outs(uuid, boolean, timestamptz),
  ops.policy_fields(),
  ops.operator_change(),
  ops.audit(text, text, uuid, text, jsonb, jsonb),
  ops.policy_set(uuid, text, jsonb, text),
  ops.policy_clear(uuid, text, text),
  ops.switch_off(uuid, text, text, text),
  ops.switch_on(uuid, text, text),
  ops.budget_set(uuid, numeric, text, text, text),
  ops.budget_clear(uuid, text),
  ops.policy_show(uuid, text, timestamptz),
  ops.session_show(uuid, timestamptz),
  ops.autoshard_org_buckets(numeric, numeric, timestamptz)
to service_role;
grant select on ops.rate_limit_status, ops.org_dashboard to service_role;

-- Schedule, only where pg_cron is enabled (as the usage rollup's).
do $$
begin
  if exists (select 1 from pg_extension where extname = 'pg_cron') then
    perform cron.schedule('agent-chat-autoshard', '* * * * *', 'select count(*) from ops.autoshard_org_buckets()');
  end if;
end;
$$;
