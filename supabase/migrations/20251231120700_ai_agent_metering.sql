-- agent-chat: metering that holds whatever fails.
--
--   agent_settle_usage   the settlement of a model call without a usage row
--                        (AI_AGENT_USAGE_LOG_ENABLED=false): the reservation,
--                        the token and spend counters, the Idempotency-Key.
--                        Logging off stops rows, never the controls.
--
-- Every settlement may be sent more than once (the function retries a
-- write whose outcome it could not learn): a usage row is metered once by
-- its unique request_id; a settlement without a row is counted once by
-- ops.settled_requests.

-- ---------------------------------------------------------------------------
-- ops.settled_requests
-- ---------------------------------------------------------------------------
create table ops.settled_requests (
  request_id text primary key,
  settled_at timestamptz not null default now()
);
comment on table ops.settled_requests is
  'Request ids of billed model calls settled without a usage row (usage log off): a retried settlement counts once. Kept two days (ops.purge_expired); the function gives up retrying long before.';
alter table ops.settled_requests enable row level security;
revoke all on ops.settled_requests from public, anon, authenticated;
grant select, insert, delete on ops.settled_requests to service_role;

-- ---------------------------------------------------------------------------
-- public.agent_settle_usage: the usage log is off.
-- ---------------------------------------------------------------------------
create function public.agent_settle_usage(p_event jsonb)
returns void
language plpgsql
set search_path = ''
as $$
declare
  v_e record;
begin
  if p_event ? 'idempotency' then perform ops.idempotency_settle(p_event); end if;
  select e.request_id, e.org_id, e.user_id, e.model, e.metadata ->> 'requested_model' as requested_model,
         greatest(e.prompt_tokens, 0) as prompt_tokens, greatest(e.cached_prompt_tokens, 0) as cached_prompt_tokens,
         greatest(e.completion_tokens, 0) as completion_tokens, greatest(e.total_tokens, 0) as total_tokens,
         e.event_count, coalesce(e.created_at, now()) as created_at
  into v_e
  from jsonb_to_record(p_event) as e (
    request_id text, org_id uuid, user_id uuid, model text, metadata jsonb,
    prompt_tokens integer, cached_prompt_tokens integer, completion_tokens integer, total_tokens integer,
    event_count integer, created_at timestamptz);
  -- A billed call counts once, however often its settlement is sent.
  if v_e.request_id is not null and ops.is_billed(v_e.prompt_tokens, v_e.completion_tokens, v_e.total_tokens) then
    insert into ops.settled_requests (request_id) values (v_e.request_id) on conflict do nothing;
    if not found then return; end if;
  end if;
  perform ops.settle_usage_event(
    v_e.request_id, v_e.org_id, v_e.user_id,
    coalesce(ops.priced_as(v_e.model, v_e.requested_model, v_e.created_at), v_e.model),
    v_e.prompt_tokens, v_e.cached_prompt_tokens, v_e.completion_tokens, v_e.total_tokens,
    v_e.event_count, v_e.created_at);
end;
$$;
comment on function public.agent_settle_usage(jsonb) is
  'agent-chat with the usage log off: settles a usage event as its row would (token reservation, token and spend counters at the priced_as price, Idempotency-Key) without writing the row; a billed request id counts once. service_role only.';
revoke execute on function public.agent_settle_usage(jsonb) from public, anon, authenticated;
grant execute on function public.agent_settle_usage(jsonb) to service_role;

create function ops.purge_settled_requests(p_now timestamptz default now())
returns jsonb
language plpgsql
set search_path = ''
as $$
declare
  v_rows integer;
begin
  delete from ops.settled_requests r where r.settled_at < p_now - interval '2 days';
  get diagnostics v_rows = row_count;
  return jsonb_build_object('settled_requests_deleted', v_rows);
end;
$$;
comment on function ops.purge_settled_requests(timestamptz) is
  'Deletes settlement marks older than two days. Run by ops.purge_expired.';
revoke execute on function ops.purge_settled_requests(timestamptz) from public, anon, authenticated;
grant execute on function ops.purge_settled_requests(timestamptz) to service_role;
