-- agent-chat: operator functions, the ones the runbook and the operator CLI
-- (npm run ops) call: inspect and clear rate-limit buckets, add, expire and
-- list opt-outs, show a stored session, purge what has expired.
-- service_role only (Supabase Studio's SQL editor runs as postgres).

-- ---------------------------------------------------------------------------
-- Rate-limit inspection
-- ---------------------------------------------------------------------------
create view ops.rate_limit_status with (security_invoker = true) as
  select
    r.bucket_key,
    r.scope,
    r.max_requests,
    r.window_seconds,
    u.used,
    greatest(r.max_requests - u.used, 0) as remaining,
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
  'Each bucket now: used and remaining in its window, when the oldest counted slot frees up (next_slot_frees_at) and when the bucket is empty (empty_at).';
grant select on ops.rate_limit_status to service_role;

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
revoke execute on function ops.bucket_status(text) from public, anon, authenticated;
grant execute on function ops.bucket_status(text) to service_role;

create function ops.clear_rate_limit(p_bucket_key text)
returns integer
language plpgsql
set search_path = ''
as $$
declare
  v_deleted integer;
begin
  if p_bucket_key is null or p_bucket_key !~ '^(org|user|ip):.+' then
    raise exception 'bucket key must look like org:<id>, user:<id> or ip:<address>, got %', coalesce(p_bucket_key, 'NULL')
      using errcode = '22023';
  end if;
  delete from ops.rate_limits r where r.bucket_key = p_bucket_key;
  get diagnostics v_deleted = row_count;
  return v_deleted;
end;
$$;
comment on function ops.clear_rate_limit(text) is
  'Empties one rate-limit bucket (deletes its row); returns 1 if it existed, 0 otherwise.';
revoke execute on function ops.clear_rate_limit(text) from public, anon, authenticated;
grant execute on function ops.clear_rate_limit(text) to service_role;

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
revoke execute on function ops.add_opt_out(uuid, uuid, text, text, text, timestamptz) from public, anon, authenticated;
grant execute on function ops.add_opt_out(uuid, uuid, text, text, text, timestamptz) to service_role;

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
revoke execute on function ops.expire_opt_out(uuid, text, timestamptz) from public, anon, authenticated;
grant execute on function ops.expire_opt_out(uuid, text, timestamptz) to service_role;

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
revoke execute on function ops.list_opt_outs(uuid, boolean, timestamptz) from public, anon, authenticated;
grant execute on function ops.list_opt_outs(uuid, boolean, timestamptz) to service_role;

-- ---------------------------------------------------------------------------
-- Sessions and housekeeping
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
revoke execute on function ops.session_show(uuid, timestamptz) from public, anon, authenticated;
grant execute on function ops.session_show(uuid, timestamptz) to service_role;

create function ops.purge_expired(
  p_now timestamptz default now(),
  p_usage_retention interval default null
)
returns jsonb
language plpgsql
set search_path = ''
as $$
declare
  v_messages integer;
  v_buckets integer;
  v_usage integer := 0;
begin
  -- Messages of expired sessions go; the session row stays so its id
  -- keeps belonging to its owner.
  delete from public.agent_session_messages m
  using public.agent_sessions s
  where m.session_id = s.id and s.expires_at <= p_now;
  get diagnostics v_messages = row_count;

  -- Buckets whose every admission has left the window hold nothing.
  delete from ops.rate_limits r
  where r.updated_at < p_now - make_interval(secs => r.window_seconds + r.slot_ms / 1000.0);
  get diagnostics v_buckets = row_count;

  if p_usage_retention is not null then
    delete from public.agent_usage_events e where e.created_at < p_now - p_usage_retention;
    get diagnostics v_usage = row_count;
  end if;

  return jsonb_build_object('messages_deleted', v_messages, 'buckets_deleted', v_buckets, 'usage_events_deleted', v_usage)
    || ops.purge_idempotency_keys(p_now);
end;
$$;
comment on function ops.purge_expired(timestamptz, interval) is
  'Deletes the messages of expired sessions, rate-limit rows that hold no admission, expired Idempotency-Key rows, and (when p_usage_retention is given) older usage events. Scheduled nightly with pg_cron when present.';
revoke execute on function ops.purge_expired(timestamptz, interval) from public, anon, authenticated;
grant execute on function ops.purge_expired(timestamptz, interval) to service_role;
