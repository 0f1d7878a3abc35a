-- agent-chat: members' data. Erasure (ops.forget_user, also run when the
-- auth user is deleted), export (ops.export_user), retention of personal
-- fields and the bounded nightly purge (ops.purge_expired, ops.purge_nightly),
-- and the opt-out registry as a history nobody rewrites.
--
-- What is personal here, and what happens to it:
--   agent_sessions + agent_session_messages   erased; messages follow the session TTL, expired
--                                              sessions are deleted after expired_session_days
--   ops.idempotency_keys (stored answers)      erased; expire with the session TTL
--   ops.token_reservations, user: buckets       erased (counters of the user id)
--   agent_usage_events                          erasure: user_id and session_id replaced by a
--                                              pseudonym, client IP, client metadata, client
--                                              request id and error_message removed; tokens,
--                                              cost, org, model, outcome and time stay (bills
--                                              and dashboards do not change). Retention: after
--                                              usage_personal_days the IP becomes its address
--                                              block and client metadata goes; after
--                                              usage_row_months the row goes.
--   agent_opt_outs                              kept: the member's instruction (never deleted)
-- Sessions in Redis are erased by `npm run ops -- forget` (ops.redis_erasure_queue
-- holds the ones still to do, e.g. after an auth user was deleted).

-- ---------------------------------------------------------------------------
-- Retention settings (one row), audited like policies.
-- ---------------------------------------------------------------------------
create table ops.retention_settings (
  id boolean primary key default true check (id),
  usage_personal_days integer not null default 30 check (usage_personal_days between 1 and 3650),
  usage_row_months integer not null default 13 check (usage_row_months between 1 and 120),
  expired_session_days integer not null default 30 check (expired_session_days between 0 and 3650),
  batch_rows integer not null default 5000 check (batch_rows between 1 and 1000000),
  updated_by text,
  updated_at timestamptz not null default now()
);
comment on table ops.retention_settings is
  'One row: how long members'' data is kept, applied by ops.purge_expired (nightly with pg_cron). Change with ops.retention_set (audited in ops.policy_audit; plain SQL is audited too).';
comment on column ops.retention_settings.usage_personal_days is
  'After this many days a usage row keeps only the client IP''s address block (/24 IPv4, /64 IPv6) for abuse analysis; client metadata, the client request id and error_message (the upstream''s text, which may quote the member) are removed. Default 30.';
comment on column ops.retention_settings.usage_row_months is
  'Usage rows older than this many months are deleted. Default 13: a full year plus the month being compared with it.';
comment on column ops.retention_settings.expired_session_days is
  'A session that expired this many days ago is deleted (its messages go at expiry). Default 30: the id stays bound to its owner as long as the Redis store''s owner key.';
comment on column ops.retention_settings.batch_rows is 'Rows per step and per ops.purge_expired call; ops.purge_nightly commits between calls.';
insert into ops.retention_settings default values;
alter table ops.retention_settings enable row level security;
create trigger retention_settings_audit after insert or update or delete on ops.retention_settings
  for each row execute function ops.audit_direct_change();

create function ops.retention_set(p_settings jsonb, p_actor text default null)
returns ops.retention_settings
language plpgsql
set search_path = ''
as $$
declare
  v_old ops.retention_settings;
  v_new ops.retention_settings;
  v_unknown text;
begin
  perform ops.operator_change();
  if p_settings is null or jsonb_typeof(p_settings) <> 'object' or p_settings = '{}'::jsonb then
    raise exception 'settings must be a JSON object: usage_personal_days, usage_row_months, expired_session_days, batch_rows'
      using errcode = '22023';
  end if;
  select string_agg(k, ', ') into v_unknown from jsonb_object_keys(p_settings) k
  where k not in ('usage_personal_days', 'usage_row_months', 'expired_session_days', 'batch_rows');
  if v_unknown is not null then
    raise exception 'unknown retention setting(s): %', v_unknown using errcode = '22023';
  end if;
  select r.* into v_old from ops.retention_settings r for update;
  v_new := jsonb_populate_record(v_old, p_settings);
  update ops.retention_settings r
  set usage_personal_days = v_new.usage_personal_days, usage_row_months = v_new.usage_row_months,
      expired_session_days = v_new.expired_session_days, batch_rows = v_new.batch_rows,
      updated_by = coalesce(nullif(btrim(p_actor), ''), session_user::text), updated_at = now()
  returning r.* into v_new;
  perform ops.audit(p_actor, 'retention_set', null, null, to_jsonb(v_old), to_jsonb(v_new));
  return v_new;
end;
$$;
comment on function ops.retention_set(jsonb, text) is
  'Sets retention periods from a JSON object, e.g. ''{"usage_personal_days": 14}''. Audited in ops.policy_audit. CLI: retention set field=value.';

-- ---------------------------------------------------------------------------
-- Personal fields of a usage row: one body for erasure and retention.
-- ---------------------------------------------------------------------------
-- The block an address belongs to, as _shared/client-ip.ts writes an IPv6
-- one (first four groups without leading zeros, then ::/64); IPv4 /24.
-- NULL for anything that is not an address.
create function ops.address_block(p_ip text)
returns text
language plpgsql
immutable
set search_path = ''
as $$
declare
  v_ip text := lower(btrim(p_ip));
  v_head text[];
  v_tail text[];
  v_groups text[];
begin
  if v_ip ~ '^::ffff:\d+\.\d+\.\d+\.\d+$' then
    v_ip := substr(v_ip, 8);
  end if;
  if v_ip ~ '^(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(\.(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)){3}$' then
    return split_part(v_ip, '.', 1) || '.' || split_part(v_ip, '.', 2) || '.' || split_part(v_ip, '.', 3) || '.0/24';
  end if;
  if v_ip !~ '^[0-9a-f:.]+$' or v_ip !~ ':' or length(v_ip) > 45 then
    return null;
  end if;
  if position('::' in v_ip) > 0 then
    v_head := case when split_part(v_ip, '::', 1) = '' then '{}'::text[] else string_to_array(split_part(v_ip, '::', 1), ':') end;
    v_tail := case when split_part(v_ip, '::', 2) = '' then '{}'::text[] else string_to_array(split_part(v_ip, '::', 2), ':') end;
    v_groups := v_head || array_fill('0'::text, array[greatest(0, 8 - cardinality(v_head) - cardinality(v_tail))]) || v_tail;
  else
    v_groups := string_to_array(v_ip, ':');
  end if;
  if cardinality(v_groups) < 4 then
    return null;
  end if;
  return coalesce(nullif(ltrim(v_groups[1], '0'), ''), '0') || ':' || coalesce(nullif(ltrim(v_groups[2], '0'), ''), '0') || ':'
      || coalesce(nullif(ltrim(v_groups[3], '0'), ''), '0') || ':' || coalesce(nullif(ltrim(v_groups[4], '0'), ''), '0') || '::/64';
end;
$$;
comment on function ops.address_block(text) is
  'The address block an IP belongs to: a.b.c.0/24 for IPv4, the /64 for IPv6 (written as _shared/client-ip.ts addressBlock writes it); NULL when p_ip is not an address.';

create function ops.personal_metadata_keys()
returns text[]
language sql
immutable
set search_path = ''
as $$
  select array['client', 'client_ip', 'client_request_id', 'top_ips'];
$$;
comment on function ops.personal_metadata_keys() is
  'Keys of agent_usage_events.metadata that hold personal data: the client''s metadata, the client IP, the client''s request id, and the top IPs of an aggregated refusal row.';

-- What is left of a usage row's metadata without its personal keys: with
-- p_keep_blocks the addresses become their blocks (retention), without them
-- nothing of the address is left (erasure).
create function ops.scrub_usage_metadata(p_metadata jsonb, p_keep_blocks boolean)
returns jsonb
language sql
immutable
set search_path = ''
as $$
  select (p_metadata - ops.personal_metadata_keys())
    || case when p_keep_blocks and ops.address_block(p_metadata ->> 'client_ip') is not null
            then jsonb_build_object('client_ip_block', ops.address_block(p_metadata ->> 'client_ip'))
            else '{}'::jsonb end
    || case when p_keep_blocks and jsonb_typeof(p_metadata -> 'top_ips') = 'array'
            then jsonb_build_object('top_ip_blocks', coalesce((
              select jsonb_agg(jsonb_build_object('block', ops.address_block(t ->> 'ip'), 'count', t -> 'count'))
              from jsonb_array_elements(p_metadata -> 'top_ips') t), '[]'::jsonb))
            else '{}'::jsonb end
    || jsonb_build_object('personal_removed', true);
$$;
comment on function ops.scrub_usage_metadata(jsonb, boolean) is
  'A usage row''s metadata without its personal keys (ops.personal_metadata_keys), marked personal_removed; with p_keep_blocks the client IP and the top IPs are kept as address blocks.';

-- The rows retention still has to scrub, oldest first; the index shrinks as
-- they are scrubbed, so the nightly batch never rescans done rows.
create index agent_usage_events_personal_idx on public.agent_usage_events (created_at)
  where metadata ?| array['client', 'client_ip', 'client_request_id', 'top_ips'] or error_message is not null;

-- ---------------------------------------------------------------------------
-- Erasure records and the Redis erasures still to do.
-- ---------------------------------------------------------------------------
create table ops.member_erasures (
  id bigint generated always as identity primary key,
  user_id uuid not null,
  requested_by text not null,
  source text not null check (source in ('operator', 'auth_delete')),
  erased_at timestamptz not null default now(),
  counts jsonb not null,
  redis_state text not null default 'pending' check (redis_state in ('pending', 'done', 'no_redis')),
  redis_sessions_deleted integer,
  redis_done_at timestamptz,
  redis_done_by text
);
comment on table ops.member_erasures is
  'One row per erasure of a member (ops.forget_user): whose, who asked, when, and how many rows of each kind were erased or pseudonymised. Never what was erased, and never the pseudonym (so usage rows cannot be linked back). redis_state: pending until `npm run ops -- forget` (or forget --pending) erased the member''s Redis sessions.';
comment on column ops.member_erasures.counts is
  'sessions, messages, idempotency_keys, token_reservations, buckets, token_counters, usage_rows_pseudonymised.';
create index member_erasures_user_id_idx on ops.member_erasures (user_id);
alter table ops.member_erasures enable row level security;

create table ops.redis_erasure_queue (
  erasure_id bigint primary key references ops.member_erasures (id),
  user_id uuid not null,
  queued_at timestamptz not null default now(),
  attempts integer not null default 0,
  last_attempt_at timestamptz,
  last_error text
);
comment on table ops.redis_erasure_queue is
  'Redis erasures still to do (the database cannot reach Redis): written by ops.forget_user, deleted by ops.redis_erasure_done when `npm run ops -- forget` or `forget --pending` (run it on a schedule) has erased the member''s Redis sessions.';
alter table ops.redis_erasure_queue enable row level security;

-- ---------------------------------------------------------------------------
-- ops.forget_user
-- ---------------------------------------------------------------------------
-- security definer: writes the erasure record and the queue (no caller may
-- write or forge them), and runs from the auth.users trigger under the Auth
-- server's role, which holds no rights on these tables.
create function ops.forget_user(
  p_user_id uuid,
  p_by text,
  p_now timestamptz default now(),
  p_source text default 'operator'
)
returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
declare
  -- One pseudonym per erasure, random (not derived from the user id) and
  -- never stored beside it; session ids map through a salt kept nowhere.
  v_pseudonym uuid := gen_random_uuid();
  v_salt text := gen_random_uuid()::text;
  v_counts jsonb := '{}'::jsonb;
  v_n integer;
  v_id bigint;
begin
  if p_user_id is null then
    raise exception 'user_id is required' using errcode = '22023';
  end if;
  if nullif(btrim(p_by), '') is null then
    raise exception 'by is required: who asked for the erasure (a ticket, an operator)' using errcode = '22023';
  end if;

  select count(*) into v_n from public.agent_session_messages m
  join public.agent_sessions s on s.id = m.session_id where s.user_id = p_user_id;
  v_counts := v_counts || jsonb_build_object('messages', v_n);
  delete from public.agent_sessions s where s.user_id = p_user_id;  -- messages cascade
  get diagnostics v_n = row_count;
  v_counts := v_counts || jsonb_build_object('sessions', v_n);

  delete from ops.idempotency_keys k where k.user_id = p_user_id;
  get diagnostics v_n = row_count;
  v_counts := v_counts || jsonb_build_object('idempotency_keys', v_n);

  delete from ops.token_reservations t where t.user_id = p_user_id;
  get diagnostics v_n = row_count;
  v_counts := v_counts || jsonb_build_object('token_reservations', v_n);

  delete from ops.rate_limits r where r.bucket_key = 'user:' || p_user_id;
  get diagnostics v_n = row_count;
  v_counts := v_counts || jsonb_build_object('buckets', v_n);

  delete from ops.token_counters c
  where c.counter_key in ('user:' || p_user_id || ':minute', 'user:' || p_user_id || ':day');
  get diagnostics v_n = row_count;
  v_counts := v_counts || jsonb_build_object('token_counters', v_n);

  -- A plain update by user_id (also on a partitioned table): tokens, cost,
  -- org, model, outcome and time stay.
  update public.agent_usage_events e
  set user_id = v_pseudonym,
      session_id = case when e.session_id is not null then md5(v_salt || e.session_id::text)::uuid end,
      error_message = null,
      metadata = ops.scrub_usage_metadata(e.metadata, false)
  where e.user_id = p_user_id;
  get diagnostics v_n = row_count;
  v_counts := v_counts || jsonb_build_object('usage_rows_pseudonymised', v_n);

  insert into ops.member_erasures (user_id, requested_by, source, erased_at, counts)
  values (p_user_id, btrim(p_by), p_source, p_now, v_counts)
  returning id into v_id;
  insert into ops.redis_erasure_queue (erasure_id, user_id, queued_at) values (v_id, p_user_id, p_now);
  return jsonb_build_object('erasure_id', v_id, 'user_id', p_user_id, 'redis', 'pending') || v_counts;
end;
$$;
comment on function ops.forget_user(uuid, text, timestamptz, text) is
  'Erases one member in Postgres: sessions and messages, stored Idempotency-Key answers, token reservations, their user: bucket and token counters; their usage rows keep tokens, cost, org, model, outcome and time under a random pseudonym, without client IP, client metadata, client request id or error detail. Opt-outs stay. Records the erasure (ops.member_erasures) and queues the Redis part (ops.redis_erasure_queue). CLI: forget --user <uuid> --by <who> (also erases Redis).';

create function ops.redis_erasures_pending(p_limit integer default 100)
returns table (erasure_id bigint, user_id uuid, queued_at timestamptz, attempts integer, last_error text)
language sql
stable
set search_path = ''
as $$
  select q.erasure_id, q.user_id, q.queued_at, q.attempts, q.last_error
  from ops.redis_erasure_queue q order by q.queued_at, q.erasure_id limit greatest(p_limit, 1);
$$;
comment on function ops.redis_erasures_pending(integer) is 'Redis erasures still to do, oldest first. CLI: forget --pending.';

-- security definer: completes the erasure record, which no caller may write.
create function ops.redis_erasure_done(
  p_erasure_id bigint,
  p_sessions_deleted integer,
  p_by text default null,
  p_error text default null,
  p_now timestamptz default now()
)
returns boolean
language plpgsql
security definer
set search_path = ''
as $$
begin
  if p_error is not null then
    update ops.redis_erasure_queue q
    set attempts = q.attempts + 1, last_attempt_at = p_now, last_error = left(p_error, 500)
    where q.erasure_id = p_erasure_id;
    return false;
  end if;
  delete from ops.redis_erasure_queue q where q.erasure_id = p_erasure_id;
  if not found then
    return false;
  end if;
  update ops.member_erasures e
  set redis_state = case when p_sessions_deleted is null then 'no_redis' else 'done' end,
      redis_sessions_deleted = p_sessions_deleted, redis_done_at = p_now,
      redis_done_by = coalesce(nullif(btrim(p_by), ''), session_user::text)
  where e.id = p_erasure_id;
  return true;
end;
$$;
comment on function ops.redis_erasure_done(bigint, integer, text, text, timestamptz) is
  'Records the Redis part of an erasure: done with the number of sessions deleted (NULL = this deployment has no Redis), or, with p_error, a failed attempt that stays queued. True when the queued erasure was completed.';

-- ---------------------------------------------------------------------------
-- A turn in flight during an erasure does not undo it.
-- ---------------------------------------------------------------------------
-- A turn that arrived before its member was erased and is logged after
-- (agent_finish_turn saves the session first, then this row): the session
-- it re-created goes (messages cascade) and its row is metered without the
-- member (a random pseudonym, no session, no error detail, no personal
-- metadata), as ops.forget_user left the member's earlier rows. created_at
-- is the request's arrival. Runs as the writer of the row (service_role
-- reads the erasure records and deletes sessions).
create function ops.forget_in_flight_usage()
returns trigger
language plpgsql
set search_path = ''
as $$
begin
  if new.user_id is null or not exists (
    select 1 from ops.member_erasures x where x.user_id = new.user_id and x.erased_at >= new.created_at) then
    return new;
  end if;
  if new.session_id is not null then
    delete from public.agent_sessions s where s.id = new.session_id and s.user_id = new.user_id;
  end if;
  new.user_id := gen_random_uuid();
  new.session_id := null;
  new.error_message := null;
  new.metadata := ops.scrub_usage_metadata(coalesce(new.metadata, '{}'::jsonb), false);
  return new;
end;
$$;
comment on function ops.forget_in_flight_usage() is
  'Trigger of public.agent_usage_events: a row whose request arrived (created_at) before its member''s erasure (ops.member_erasures) deletes the session that turn re-created and is stored under a random pseudonym without session, error detail or personal metadata; tokens, cost, org and model stay.';
create trigger agent_usage_events_forget_in_flight before insert on public.agent_usage_events
  for each row execute function ops.forget_in_flight_usage();

-- ---------------------------------------------------------------------------
-- Deleting an auth user erases their agent-chat data.
-- ---------------------------------------------------------------------------
-- security definer: the Auth server (supabase_auth_admin) deletes users and
-- holds no rights on agent-chat's tables.
create function ops.forget_deleted_auth_user()
returns trigger
language plpgsql
security definer
set search_path = ''
as $$
begin
  perform ops.forget_user(old.id, 'auth.users delete', now(), 'auth_delete');
  return null;
end;
$$;
comment on function ops.forget_deleted_auth_user() is
  'Trigger of auth.users: a deleted user is erased as ops.forget_user erases (its Redis part is queued in ops.redis_erasure_queue).';
create trigger agent_chat_forget_deleted_user after delete on auth.users
  for each row execute function ops.forget_deleted_auth_user();

-- ---------------------------------------------------------------------------
-- Opt-outs as history: never deleted, every change recorded.
-- ---------------------------------------------------------------------------
create table ops.opt_out_audit (
  id bigint generated always as identity primary key,
  at timestamptz not null default now(),
  opt_out_id uuid not null,
  action text not null check (action in ('insert', 'update', 'delete')),
  actor text not null,
  db_role text not null,
  auth_uid uuid,
  old_value jsonb,
  new_value jsonb
);
comment on table ops.opt_out_audit is
  'Every insert and update of public.agent_opt_outs (and a delete by the table owner, the only role allowed one), however made (ops functions, the Data API, plain SQL in Studio): who (actor: created_by/expired_by as the row names it, else the auth user, else the database role), the database role that made it, when, and the row before and after. Written only by its trigger. See a member''s history with: select * from ops.opt_out_audit where opt_out_id in (select id from public.agent_opt_outs where user_id = ''<uuid>'') order by at.';
comment on column ops.opt_out_audit.db_role is 'The database role that made the change (SET ROLE included, e.g. service_role through the Data API): not forgeable by the caller.';
create index opt_out_audit_opt_out_idx on ops.opt_out_audit (opt_out_id, at);
alter table ops.opt_out_audit enable row level security;

-- security definer: writes the audit row no caller may write. The caller's
-- role is the role setting (SET ROLE, as the Data API does), else the login.
create function ops.record_opt_out_change()
returns trigger
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_role text := coalesce(nullif(current_setting('role', true), 'none'), session_user::text);
  v_uid uuid;
begin
  begin
    v_uid := nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'sub';
  exception when others then
    v_uid := null;
  end;
  insert into ops.opt_out_audit (opt_out_id, action, actor, db_role, auth_uid, old_value, new_value)
  values (
    coalesce(new.id, old.id), lower(tg_op),
    coalesce(
      case when tg_op = 'INSERT' then nullif(btrim(new.created_by), '') end,
      case when tg_op = 'UPDATE' and new.expired_by is distinct from old.expired_by then nullif(btrim(new.expired_by), '') end,
      v_uid::text, v_role),
    v_role, v_uid,
    case when tg_op <> 'INSERT' then to_jsonb(old) end,
    case when tg_op <> 'DELETE' then to_jsonb(new) end);
  return null;
end;
$$;
comment on function ops.record_opt_out_change() is 'Trigger of public.agent_opt_outs: records every change in ops.opt_out_audit.';
create trigger agent_opt_outs_audit after insert or update or delete on public.agent_opt_outs
  for each row execute function ops.record_opt_out_change();

-- Runs as the caller (no security definer): current_user is who deletes.
create function ops.refuse_opt_out_delete()
returns trigger
language plpgsql
set search_path = ''
as $$
begin
  if current_user <> (select pg_catalog.pg_get_userbyid(c.relowner) from pg_catalog.pg_class c where c.oid = tg_relid) then
    raise exception 'opt-outs are history and are never deleted: expire one with ops.expire_opt_out(id, by)'
      using errcode = '42501';
  end if;
  return case when tg_level = 'ROW' then old end;
end;
$$;
comment on function ops.refuse_opt_out_delete() is
  'Trigger of public.agent_opt_outs: refuses a delete or truncate by any role but the table owner (the migration owner), service_role included.';
create trigger agent_opt_outs_no_delete before delete on public.agent_opt_outs
  for each row execute function ops.refuse_opt_out_delete();
create trigger agent_opt_outs_no_truncate before truncate on public.agent_opt_outs
  for each statement execute function ops.refuse_opt_out_delete();

-- ---------------------------------------------------------------------------
-- ops.export_user: the Postgres part of a subject-access request.
-- ---------------------------------------------------------------------------
create function ops.export_user(p_user_id uuid, p_now timestamptz default now())
returns jsonb
language sql
stable
set search_path = ''
as $$
  select jsonb_build_object(
    'user_id', p_user_id,
    'exported_at', p_now,
    'sessions', coalesce((
      select jsonb_agg(jsonb_build_object(
        'id', s.id, 'org_id', s.org_id, 'channel', s.channel, 'store', 'supabase',
        'created_at', s.created_at, 'updated_at', s.updated_at, 'expires_at', s.expires_at,
        'messages', coalesce((
          select jsonb_agg(jsonb_build_object('role', m.role, 'content', m.content, 'created_at', m.created_at) order by m.id)
          from public.agent_session_messages m where m.session_id = s.id), '[]'::jsonb))
        order by s.created_at)
      from public.agent_sessions s where s.user_id = p_user_id), '[]'::jsonb),
    'stored_answers', coalesce((
      select jsonb_agg(jsonb_build_object(
        'idempotency_key', k.idempotency_key, 'org_id', k.org_id, 'state', k.state, 'response', k.response,
        'created_at', k.created_at, 'expires_at', k.expires_at) order by k.created_at)
      from ops.idempotency_keys k where k.user_id = p_user_id), '[]'::jsonb),
    'opt_outs', coalesce((
      select jsonb_agg(to_jsonb(o) order by o.created_at) from public.agent_opt_outs o where o.user_id = p_user_id), '[]'::jsonb),
    'opt_out_history', coalesce((
      select jsonb_agg(jsonb_build_object('opt_out_id', a.opt_out_id, 'at', a.at, 'action', a.action, 'actor', a.actor,
                                          'new_value', a.new_value) order by a.at, a.id)
      from ops.opt_out_audit a join public.agent_opt_outs o on o.id = a.opt_out_id where o.user_id = p_user_id), '[]'::jsonb),
    'usage_events', coalesce((
      select jsonb_agg(to_jsonb(e) - 'user_id' order by e.created_at, e.id)
      from public.agent_usage_events e where e.user_id = p_user_id), '[]'::jsonb),
    'erasures', coalesce((
      select jsonb_agg(jsonb_build_object('erased_at', x.erased_at, 'requested_by', x.requested_by, 'source', x.source,
                                          'redis_state', x.redis_state) order by x.erased_at)
      from ops.member_erasures x where x.user_id = p_user_id), '[]'::jsonb)
  );
$$;
comment on function ops.export_user(uuid, timestamptz) is
  'Everything agent-chat keeps in Postgres about one member, as one JSON document: sessions with their messages, stored Idempotency-Key answers, opt-outs and their history, usage rows, and earlier erasures. CLI: export --user <uuid> (adds the Redis sessions).';

-- ---------------------------------------------------------------------------
-- Purge: retention in bounded batches.
-- ---------------------------------------------------------------------------
create function ops.purge_expired(
  p_now timestamptz default now(),
  p_usage_retention interval default null,
  p_batch_rows integer default null
)
returns jsonb
language plpgsql
set search_path = ''
as $$
declare
  v_settings ops.retention_settings;
  v_batch integer;
  v_messages integer;
  v_sessions integer;
  v_scrubbed integer;
  v_usage integer;
  v_buckets integer;
  v_outbox integer;
begin
  select r.* into v_settings from ops.retention_settings r;
  v_batch := greatest(coalesce(p_batch_rows, v_settings.batch_rows, 5000), 1);

  -- Messages of expired sessions go at expiry.
  delete from public.agent_session_messages m
  where m.id in (
    select m2.id from public.agent_session_messages m2
    join public.agent_sessions s on s.id = m2.session_id
    where s.expires_at <= p_now limit v_batch);
  get diagnostics v_messages = row_count;

  -- The session row some days later: until then its id stays its owner's.
  delete from public.agent_sessions s
  where s.id in (
    select s2.id from public.agent_sessions s2
    where s2.expires_at <= p_now - make_interval(days => v_settings.expired_session_days) limit v_batch);
  get diagnostics v_sessions = row_count;

  -- Personal fields of usage rows: the IP becomes its block, client metadata and
  -- the upstream's error text (it may quote the member's message) go.
  update public.agent_usage_events e
  set metadata = ops.scrub_usage_metadata(e.metadata, true), error_message = null
  where (e.created_at, e.id) in (
    select e2.created_at, e2.id from public.agent_usage_events e2
    where (e2.metadata ?| array['client', 'client_ip', 'client_request_id', 'top_ips'] or e2.error_message is not null)
      and e2.created_at < p_now - make_interval(days => v_settings.usage_personal_days)
    order by e2.created_at limit v_batch);
  get diagnostics v_scrubbed = row_count;

  -- Usage rows past retention go by whole UTC days: their daily partitions
  -- are dropped and the rollup forgets them too (20251231120320_ai_agent_usage_rollup).
  v_usage := (ops.drop_usage_partitions_before(
    p_now - coalesce(p_usage_retention, make_interval(months => v_settings.usage_row_months))) ->> 'usage_events_deleted')::integer;

  -- Buckets whose every admission has left the window hold nothing (a small table).
  -- Rows a turn holds are skipped (skip locked): the purge never waits for
  -- a turn, so it cannot deadlock with one waiting for a shard.
  delete from ops.rate_limits r
  where r.bucket_key in (
    select x.bucket_key from ops.rate_limits x
    where x.updated_at < p_now - make_interval(secs => x.window_seconds + x.slot_ms / 1000.0)
    for update skip locked);
  get diagnostics v_buckets = row_count;

  -- Reservations that expired a day ago (they stopped counting then), and
  -- token counters with nothing left in their window.
  delete from ops.token_reservations t where t.expires_at < p_now - interval '1 day';
  delete from ops.token_counters c where c.updated_at < p_now - interval '1 day' - make_interval(secs => c.slot_ms / 1000.0);

  -- Notifications that are settled (delivered, or failed and alerted on) go
  -- after 30 days; the alert itself stays in ops.alert_events.
  delete from ops.alert_outbox o
  where o.id in (
    select o2.id from ops.alert_outbox o2
    where o2.status <> 'pending' and o2.created_at < p_now - interval '30 days' limit v_batch);
  get diagnostics v_outbox = row_count;

  return jsonb_build_object(
    'messages_deleted', v_messages, 'sessions_deleted', v_sessions,
    'usage_events_scrubbed', v_scrubbed, 'usage_events_deleted', v_usage, 'buckets_deleted', v_buckets,
    'alert_notifications_deleted', v_outbox,
    'more', greatest(v_messages, v_sessions, v_scrubbed, v_usage, v_outbox) >= v_batch)
    || ops.purge_idempotency_keys(p_now)
    || ops.purge_settled_requests(p_now);
end;
$$;
comment on function ops.purge_expired(timestamptz, interval, integer) is
  'One bounded round of retention (ops.retention_settings): at most batch_rows each of expired sessions'' messages, sessions expired expired_session_days ago, usage rows past usage_personal_days to scrub (IP to its block, client metadata dropped) and usage rows past usage_row_months (or p_usage_retention) deleted by whole UTC days (ops.drop_usage_partitions_before); plus empty buckets, old reservations and counters, expired Idempotency-Keys, settlement marks older than two days, alert notifications delivered or failed more than 30 days ago. more = true: call again (ops.purge_nightly loops, committing between rounds).';

-- No `set search_path` clause: Postgres refuses COMMIT in a procedure that
-- has one. Not security definer, and every name is qualified.
create procedure ops.purge_nightly(p_max_rounds integer default 1000)
language plpgsql
as $$
declare
  v_round integer := 0;
  v_result jsonb;
begin
  loop
    v_result := ops.purge_expired(pg_catalog.now());
    commit;
    v_round := v_round + 1;
    exit when not (v_result ->> 'more')::boolean or v_round >= p_max_rounds;
  end loop;
end;
$$;
comment on procedure ops.purge_nightly(integer) is
  'Runs ops.purge_expired until nothing is left (at most p_max_rounds), committing after each bounded round so no delete is huge and no transaction long. pg_cron runs it nightly (job agent-chat-purge-expired: call ops.purge_nightly()); call it alone, not inside a transaction.';

-- ---------------------------------------------------------------------------
-- Privileges of every table, function and procedure above, one statement per
-- kind (checked by supabase/tests/database/004_privileges_inventory.test.sql):
-- service_role alone reads the records and runs the operator functions;
-- the erasure record, the queue and the opt-out audit are written only by
-- their security definer writers; trigger functions are executed by no one.
-- ---------------------------------------------------------------------------
revoke all on table ops.retention_settings, ops.member_erasures, ops.redis_erasure_queue, ops.opt_out_audit
from public, anon, authenticated;
grant select, update on table ops.retention_settings to service_role;
grant select on table ops.member_erasures, ops.redis_erasure_queue, ops.opt_out_audit to service_role;
revoke execute on function
  ops.retention_set(jsonb, text),
  ops.address_block(text),
  ops.personal_metadata_keys(),
  ops.scrub_usage_metadata(jsonb, boolean),
  ops.forget_user(uuid, text, timestamptz, text),
  ops.redis_erasures_pending(integer),
  ops.redis_erasure_done(bigint, integer, text, text, timestamptz),
  ops.forget_deleted_auth_user(),
  ops.forget_in_flight_usage(),
  ops.export_user(uuid, timestamptz),
  ops.purge_expired(timestamptz, interval, integer),
  ops.record_opt_out_change(),
  ops.refuse_opt_out_delete()
from public, anon, authenticated;
revoke execute on procedure ops.purge_nightly(integer) from public, anon, authenticated;
grant execute on function
  ops.retention_set(jsonb, text),
  ops.address_block(text),
  ops.personal_metadata_keys(),
  ops.scrub_usage_metadata(jsonb, boolean),
  ops.forget_user(uuid, text, timestamptz, text),
  ops.redis_erasures_pending(integer),
  ops.redis_erasure_done(bigint, integer, text, text, timestamptz),
  ops.export_user(uuid, timestamptz),
  ops.purge_expired(timestamptz, interval, integer)
to service_role;
grant execute on procedure ops.purge_nightly(integer) to service_role;

-- The nightly purge, only where pg_cron is enabled (Database → Extensions on
-- hosted Supabase; enable it, then re-run this block from the runbook).
do $$
begin
  if exists (select 1 from pg_extension where extname = 'pg_cron') then
    perform cron.schedule('agent-chat-purge-expired', '17 3 * * *', 'call ops.purge_nightly()');
  end if;
end;
$$;
