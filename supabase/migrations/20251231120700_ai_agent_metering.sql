-- agent-chat: metering that holds whatever fails.
--
--   agent_settle_usage   the settlement of a model call without a usage row
--                        (AI_AGENT_USAGE_LOG_ENABLED=false): the reservation,
--                        the token and spend counters, the Idempotency-Key.
--                        Logging off stops rows, never the controls.
--   ops.usage_reconciliation  metered against upstream-reported and provider-
--                        billed usage (an imported export), per day and model.
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

-- ---------------------------------------------------------------------------
-- Reconciliation: what was metered against what the upstream reported and
-- what the provider billed, per UTC day and model, so an operator can prove
-- the bill (CLI: npm run ops -- reconcile [--import export.csv]).
-- ---------------------------------------------------------------------------
create table ops.provider_usage (
  day date not null,
  model text not null,
  source text not null default 'provider',
  requests bigint,
  input_tokens bigint,
  cached_input_tokens bigint,
  output_tokens bigint,
  usd numeric,
  imported_at timestamptz not null default now(),
  primary key (day, model, source)
);
comment on table ops.provider_usage is
  'Usage as the provider bills it (an imported usage or cost export), per UTC day and model: what ops.usage_reconciliation compares the metered rows with. Re-importing a day and model replaces it.';
alter table ops.provider_usage enable row level security;
revoke all on ops.provider_usage from public, anon, authenticated;
grant select, insert, update, delete on ops.provider_usage to service_role;

create function ops.provider_usage_import(p_rows jsonb, p_source text default 'provider')
returns integer
language plpgsql
set search_path = ''
as $$
declare
  v_rows integer;
begin
  if jsonb_typeof(p_rows) is distinct from 'array' then
    raise exception 'rows must be a JSON array of {day, model, requests, input_tokens, cached_input_tokens, output_tokens, usd}'
      using errcode = '22023';
  end if;
  -- Rows of one day and model (a CSV per project or per hour) are summed.
  insert into ops.provider_usage as p (day, model, source, requests, input_tokens, cached_input_tokens, output_tokens, usd)
  select r.day, r.model, coalesce(nullif(btrim(p_source), ''), 'provider'),
         sum(r.requests), sum(r.input_tokens), sum(r.cached_input_tokens), sum(r.output_tokens), sum(r.usd)
  from jsonb_to_recordset(p_rows) as r (day date, model text, requests bigint, input_tokens bigint,
                                        cached_input_tokens bigint, output_tokens bigint, usd numeric)
  where r.day is not null and r.model is not null
  group by r.day, r.model
  on conflict (day, model, source) do update
  set requests = excluded.requests, input_tokens = excluded.input_tokens,
      cached_input_tokens = excluded.cached_input_tokens, output_tokens = excluded.output_tokens,
      usd = excluded.usd, imported_at = now();
  get diagnostics v_rows = row_count;
  return v_rows;
end;
$$;
comment on function ops.provider_usage_import(jsonb, text) is
  'Imports a provider usage export (rows {day, model, requests, input_tokens, cached_input_tokens, output_tokens, usd}, summed per day and model) into ops.provider_usage, replacing what was there for those days and models. Returns the day-and-model rows written.';

create function ops.usage_reconciliation(p_from date, p_to date)
returns table (
  day date,
  model text,
  requests bigint,
  metered_prompt_tokens bigint,
  metered_completion_tokens bigint,
  reported_tokens bigint,
  estimated_tokens bigint,
  metered_usd numeric,
  provider_requests bigint,
  provider_input_tokens bigint,
  provider_output_tokens bigint,
  provider_usd numeric,
  token_difference bigint,
  usd_difference numeric
)
language sql
stable
set search_path = ''
as $$
  with metered as (
    select (e.created_at at time zone 'UTC')::date as day, e.model,
           sum(e.event_count)::bigint as requests,
           coalesce(sum(e.prompt_tokens), 0)::bigint as prompt_tokens,
           coalesce(sum(e.completion_tokens), 0)::bigint as completion_tokens,
           coalesce(sum(e.total_tokens) filter (where (e.metadata ->> 'tokens_estimated') is distinct from 'true'), 0)::bigint as reported,
           coalesce(sum(e.total_tokens) filter (where e.metadata ->> 'tokens_estimated' = 'true'), 0)::bigint as estimated,
           round(coalesce(sum(ops.event_cost_usd(coalesce(e.metadata ->> 'priced_as', e.model), e.created_at,
                                                 e.prompt_tokens, e.cached_prompt_tokens, e.completion_tokens)), 0), 6) as usd
    from public.agent_usage_events e
    where e.created_at >= (p_from::timestamp at time zone 'UTC')
      and e.created_at < ((p_to + 1)::timestamp at time zone 'UTC')
      and ops.is_billed(e.prompt_tokens, e.completion_tokens, e.total_tokens)
    group by 1, 2
  ),
  provider as (
    select p.day, p.model, sum(p.requests)::bigint as requests, sum(p.input_tokens)::bigint as input_tokens,
           sum(p.output_tokens)::bigint as output_tokens, sum(p.usd) as usd
    from ops.provider_usage p
    where p.day between p_from and p_to
    group by 1, 2
  )
  select coalesce(m.day, p.day), coalesce(m.model, p.model),
         coalesce(m.requests, 0), coalesce(m.prompt_tokens, 0), coalesce(m.completion_tokens, 0),
         coalesce(m.reported, 0), coalesce(m.estimated, 0), coalesce(m.usd, 0),
         p.requests, p.input_tokens, p.output_tokens, p.usd,
         case when p.model is not null
              then coalesce(m.prompt_tokens + m.completion_tokens, 0) - coalesce(p.input_tokens, 0) - coalesce(p.output_tokens, 0) end,
         case when p.usd is not null then round(coalesce(m.usd, 0) - p.usd, 6) end
  from metered m
  full join provider p on p.day = m.day and p.model = m.model
  order by 1, 2;
$$;
comment on function ops.usage_reconciliation(date, date) is
  'Per UTC day and reported model from p_from to p_to: what was metered (billed rows: tokens, those the upstream reported and those estimated, USD at the price charged) beside what the provider billed (ops.provider_usage, imported), and the differences (metered minus provider; NULL when nothing was imported for that day and model). Needs the usage rows: with AI_AGENT_USAGE_LOG_ENABLED=false there is nothing metered to compare.';

create view ops.usage_reconciliation_30d with (security_invoker = true) as
  select * from ops.usage_reconciliation((now() at time zone 'UTC')::date - 30, (now() at time zone 'UTC')::date);
comment on view ops.usage_reconciliation_30d is
  'ops.usage_reconciliation over the last 30 UTC days and today: metered tokens and cost per day and model beside the imported provider export.';

-- ---------------------------------------------------------------------------
-- Privileges of every function and view above, one statement each (checked
-- by supabase/tests/database/004_privileges_inventory.test.sql): service_role
-- alone may execute or read them.
-- ---------------------------------------------------------------------------
revoke execute on function
  public.agent_settle_usage(jsonb),
  ops.purge_settled_requests(timestamptz),
  ops.provider_usage_import(jsonb, text),
  ops.usage_reconciliation(date, date)
from public, anon, authenticated;
grant execute on function
  public.agent_settle_usage(jsonb),
  ops.purge_settled_requests(timestamptz),
  ops.provider_usage_import(jsonb, text),
  ops.usage_reconciliation(date, date)
to service_role;
grant select on ops.usage_reconciliation_30d to service_role;
