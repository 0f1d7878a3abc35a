-- Test helpers, included by every pgTAP file with \ir and rolled back with
-- it. Act as a user, as the service role, or as nobody.
create schema if not exists tests;

create or replace function tests.create_user(p_email text default null)
returns uuid language plpgsql as $$
declare
  v_id uuid := gen_random_uuid();
begin
  insert into auth.users (id, email) values (v_id, coalesce(p_email, v_id || '@example.test'));
  return v_id;
end;
$$;

create or replace function tests.add_member(p_org_id uuid, p_user_id uuid)
returns void language sql as $$
  insert into public.org_memberships (org_id, user_id) values (p_org_id, p_user_id);
$$;

create or replace function tests.authenticate_as(p_user_id uuid)
returns void language plpgsql as $$
begin
  perform set_config('role', 'authenticated', true);
  perform set_config('request.jwt.claims',
    jsonb_build_object('sub', p_user_id, 'role', 'authenticated', 'aud', 'authenticated')::text, true);
end;
$$;

create or replace function tests.authenticate_as_service_role()
returns void language plpgsql as $$
begin
  perform set_config('role', 'service_role', true);
  perform set_config('request.jwt.claims', jsonb_build_object('role', 'service_role')::text, true);
end;
$$;

create or replace function tests.authenticate_as_anon()
returns void language plpgsql as $$
begin
  perform set_config('role', 'anon', true);
  perform set_config('request.jwt.claims', jsonb_build_object('role', 'anon')::text, true);
end;
$$;

create or replace function tests.clear_authentication()
returns void language plpgsql as $$
begin
  perform set_config('role', 'postgres', true);
  perform set_config('request.jwt.claims', '', true);
end;
$$;

grant usage on schema tests to anon, authenticated, service_role;
grant execute on all functions in schema tests to anon, authenticated, service_role;

-- Shorthand for a begin-turn call with explicit limits and clock.
create or replace function tests.begin_turn(
  p_org uuid, p_user uuid, p_ip text, p_now timestamptz,
  p_org_limit int default 100, p_user_limit int default 100, p_ip_limit int default 100,
  p_window int default 60, p_channel text default 'app', p_session uuid default null
) returns jsonb language sql as $$
  select public.agent_begin_turn(
    p_org_id => p_org, p_user_id => p_user, p_client_ip => p_ip, p_channel => p_channel,
    p_session_id => p_session, p_org_limit => p_org_limit, p_user_limit => p_user_limit,
    p_ip_limit => p_ip_limit, p_window_seconds => p_window, p_now => p_now);
$$;
grant execute on function tests.begin_turn(uuid, uuid, text, timestamptz, int, int, int, int, text, uuid) to service_role;
