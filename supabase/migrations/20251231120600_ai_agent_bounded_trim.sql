-- agent-chat: trimming a session costs the same however long it grew.
--
-- agent_end_turn deleted every message beyond the cap in the turn that
-- found them: one slow turn on a session with thousands of stored messages.
-- It now deletes at most 64 per turn; readers only ever read the newest
-- AI_AGENT_SESSION_MAX_MESSAGES, so the excess is invisible until it goes.

create or replace function public.agent_end_turn(
  p_session_id uuid,
  p_org_id uuid,
  p_user_id uuid,
  p_channel text,
  p_user_message text,
  p_assistant_message text,
  p_ttl_seconds integer default 86400,
  p_max_messages integer default 20,
  p_now timestamptz default now()
)
returns jsonb
language plpgsql
set search_path = ''
as $$
declare
  v_session public.agent_sessions%rowtype;
  v_cutoff bigint;
begin
  if p_session_id is null or p_org_id is null or p_user_id is null then
    raise exception 'session_id, org_id and user_id are required' using errcode = '22023';
  end if;
  if p_ttl_seconds is null or p_ttl_seconds < 1 then
    raise exception 'ttl_seconds must be a positive integer' using errcode = '22023';
  end if;
  if p_max_messages is null or p_max_messages < 0 then
    raise exception 'max_messages must be zero or more' using errcode = '22023';
  end if;

  insert into public.agent_sessions (id, org_id, user_id, channel, created_at, updated_at, expires_at)
  values (p_session_id, p_org_id, p_user_id, coalesce(p_channel, 'app'), p_now, p_now,
          p_now + make_interval(secs => p_ttl_seconds))
  on conflict (id) do nothing;

  -- Lock the session row; concurrent turns on one session queue here.
  select s.* into v_session from public.agent_sessions s where s.id = p_session_id for update;
  if v_session.org_id <> p_org_id or v_session.user_id <> p_user_id then
    return jsonb_build_object('outcome', 'session_not_found');
  end if;

  -- A session revived after expiry starts empty, as it read.
  if v_session.expires_at <= p_now then
    delete from public.agent_session_messages m where m.session_id = p_session_id;
  end if;

  update public.agent_sessions s
  set updated_at = p_now,
      expires_at = p_now + make_interval(secs => p_ttl_seconds)
  where s.id = p_session_id;

  insert into public.agent_session_messages (session_id, role, content, created_at)
  values (p_session_id, 'user', p_user_message, p_now),
         (p_session_id, 'assistant', p_assistant_message, p_now);

  -- Keep the newest p_max_messages. At most 64 older rows go per turn, so a
  -- turn costs the same however much history a session holds (after the cap
  -- is lowered, say); the rest goes on later turns, or all at once when the
  -- session has expired (ops.purge_expired).
  -- Readers never see the excess: they read the newest p_max_messages.
  select m.id into v_cutoff
  from public.agent_session_messages m
  where m.session_id = p_session_id
  order by m.id desc
  offset p_max_messages
  limit 1;
  if v_cutoff is not null then
    delete from public.agent_session_messages m
    where m.id in (
      select o.id from public.agent_session_messages o
      where o.session_id = p_session_id and o.id <= v_cutoff
      order by o.id
      limit 64
    );
  end if;

  return jsonb_build_object('outcome', 'ok', 'session_id', p_session_id,
                            'expires_at', p_now + make_interval(secs => p_ttl_seconds));
end;
$$;
