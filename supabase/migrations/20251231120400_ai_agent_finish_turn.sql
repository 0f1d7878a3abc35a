-- agent-chat: save an answered turn and its usage row in one round trip.
--
-- With the Supabase session store every answered request ends with two
-- writes: the turn (agent_end_turn) and the usage row (agent_log_usage).
-- Doing both in one call saves the function a round trip and a commit per
-- request. The usage row is still the single insert of agent_log_usage.

create function public.agent_finish_turn(
  p_session_id uuid,
  p_org_id uuid,
  p_user_id uuid,
  p_channel text,
  p_user_message text,
  p_assistant_message text,
  p_ttl_seconds integer,
  p_max_messages integer,
  p_usage jsonb
)
returns jsonb
language plpgsql
set search_path = ''
as $$
declare
  v_result jsonb;
  v_logged boolean := false;
begin
  v_result := public.agent_end_turn(
    p_session_id, p_org_id, p_user_id, p_channel, p_user_message, p_assistant_message,
    p_ttl_seconds, p_max_messages);
  -- Another owner's session: the caller logs that outcome itself.
  if v_result ->> 'outcome' = 'ok' and p_usage is not null then
    -- A failing usage insert must not undo the saved turn: it runs in its
    -- own subtransaction and the caller retries it on its own path.
    begin
      perform public.agent_log_usage(p_usage);
      v_logged := true;
    exception when others then
      v_logged := false;
    end;
  end if;
  return v_result || jsonb_build_object('usage_logged', v_logged);
end;
$$;
comment on function public.agent_finish_turn(uuid, uuid, uuid, text, text, text, integer, integer, jsonb) is
  'agent-chat, Supabase store: agent_end_turn, then (when the turn was saved) agent_log_usage(p_usage), in one transaction. Returns the end-turn result plus usage_logged. service_role only.';
revoke execute on function public.agent_finish_turn(uuid, uuid, uuid, text, text, text, integer, integer, jsonb) from public, anon, authenticated;
grant execute on function public.agent_finish_turn(uuid, uuid, uuid, text, text, text, integer, integer, jsonb) to service_role;
