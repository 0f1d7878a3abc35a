-- agent-chat: the tables, their row-level security and their privileges.
--
-- One migration per concern, in this order; each calls only what an earlier
-- one (or itself, above the call) defines:
--   20251231120000_ai_agent_sessions_usage      tables, RLS policies, grants (this file)
--   20251231120100_ai_agent_rate_limits         ops.consume_rate_limits, token counters
--   20251231120150_ai_agent_idempotency         Idempotency-Key claims, replays and settlement
--   20251231120250_ai_agent_usage_scale         usage partitions (made ahead), the usage rollup's tables
--   20251231120300_ai_agent_usage_costs         agent_log_usage (the usage insert, settlement), prices, cost and health reports
--   20251231120320_ai_agent_usage_rollup        the rollup's fold and refresh, usage retention by partition, schedules
--   20251231120350_ai_agent_turns               agent_begin_turn (policies, quotas, budgets), agent_end_turn, agent_finish_turn
--   20251231120500_ai_agent_operator_functions  buckets, opt-outs, sessions, policies, switches, budgets, audit, dashboard, purge
--   20251231120550_ai_agent_alerts              alert conditions, ack and mute
--   20251231120700_ai_agent_metering            settlement without a row (usage log off), reconciliation
--   20251231120750_ai_agent_alert_delivery      the recorded check, the notification outbox agent-alerts delivers, schedules
--   20251231120800_ai_agent_members_data        erasure, export, retention and the nightly purge (and its schedule), opt-out history
--
-- Deny by default: every table has RLS; anon and authenticated get only the
-- reads a policy allows; service_role, the Edge Function's role, gets what
-- it needs. Only service_role may execute the functions of later files.
-- Supabase's default privileges in schema public grant anon and
-- authenticated everything on every new table, sequence and function: the
-- end of each file revokes them from what the file created (sequences
-- included: setval on an identity sequence would stop every insert), and
-- supabase/tests/database/004_privileges_inventory.test.sql compares every
-- privilege the two roles hold on the project's schemas with an allow-list.

create extension if not exists pgcrypto with schema extensions;

create schema if not exists ops;
comment on schema ops is
  'agent-chat internals: rate-limit buckets, prices, budgets, alerts and operator functions. Not exposed through the Data API.';
revoke all on schema ops from public, anon, authenticated;
grant usage on schema ops to service_role;

-- ---------------------------------------------------------------------------
-- Membership: a user may act only for an org it belongs to.
-- Created when absent; an existing public.org_memberships with at least
-- (org_id uuid, user_id uuid) is used as it is, and only gets an index on
-- (org_id, user_id) for the lookup agent_begin_turn makes when no index
-- starts with those columns.
-- ---------------------------------------------------------------------------
do $$
begin
  if to_regclass('public.org_memberships') is null then
    create table public.org_memberships (
      org_id uuid not null,
      user_id uuid not null references auth.users (id) on delete cascade,
      role text not null default 'member',
      created_at timestamptz not null default now(),
      primary key (org_id, user_id)
    );
    comment on table public.org_memberships is
      'Which users belong to which organization. agent-chat refuses (403 forbidden) a user acting for an org it is not a member of.';
    comment on column public.org_memberships.role is 'Free-form role inside the org (member, admin, ...). agent-chat only checks membership.';
    create index org_memberships_user_id_idx on public.org_memberships (user_id);
    alter table public.org_memberships enable row level security;
    create policy org_memberships_select_own on public.org_memberships
      for select to authenticated using (user_id = (select auth.uid()));
    revoke all on public.org_memberships from anon, authenticated;
    grant select on public.org_memberships to authenticated;
  elsif not exists (
    select 1
    from pg_index i
    where i.indrelid = 'public.org_memberships'::regclass
      and i.indnatts >= 2
      and i.indkey[0] = (select a.attnum from pg_attribute a where a.attrelid = i.indrelid and a.attname = 'org_id')
      and i.indkey[1] = (select a.attnum from pg_attribute a where a.attrelid = i.indrelid and a.attname = 'user_id')
  ) then
    create index org_memberships_org_user_lookup_idx on public.org_memberships (org_id, user_id);
  end if;
end
$$;

-- ---------------------------------------------------------------------------
-- Sessions: one row per conversation, messages in a child table so a turn is
-- an append (insert), never a read-modify-write of the whole history.
-- ---------------------------------------------------------------------------
create table public.agent_sessions (
  id uuid primary key default gen_random_uuid(),
  org_id uuid not null,
  user_id uuid not null,
  channel text not null default 'app',
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now(),
  expires_at timestamptz not null
)
-- Every turn refreshes updated_at and expires_at; room on the page keeps
-- that update HOT (no index covers either column: the nightly purge scans).
with (fillfactor = 90);
comment on table public.agent_sessions is
  'Conversations stored by agent-chat when AI_AGENT_SESSION_STORE=supabase. A session id belongs to its first (org, user) for good; the row outlives its expiry so the id cannot be taken over.';
comment on column public.agent_sessions.channel is 'Channel of the first turn (app, whatsapp, web, ussd, sms, ...).';
comment on column public.agent_sessions.expires_at is
  'After this instant the history reads as empty; refreshed to now + AI_AGENT_SESSION_TTL_SECONDS on every turn.';
create index agent_sessions_user_id_idx on public.agent_sessions (user_id);
create index agent_sessions_org_created_idx on public.agent_sessions (org_id, created_at);

create table public.agent_session_messages (
  id bigint generated always as identity primary key,
  session_id uuid not null references public.agent_sessions (id) on delete cascade,
  role text not null check (role in ('user', 'assistant')),
  content text not null,
  created_at timestamptz not null default now()
);
comment on table public.agent_session_messages is
  'Messages of public.agent_sessions, oldest first by id. Trimmed to AI_AGENT_SESSION_MAX_MESSAGES on every turn.';
create index agent_session_messages_session_idx on public.agent_session_messages (session_id, id);

alter table public.agent_sessions enable row level security;
alter table public.agent_session_messages enable row level security;
create policy agent_sessions_select_own on public.agent_sessions
  for select to authenticated using (user_id = (select auth.uid()));
create policy agent_session_messages_select_own on public.agent_session_messages
  for select to authenticated using (
    exists (
      select 1 from public.agent_sessions s
      where s.id = agent_session_messages.session_id and s.user_id = (select auth.uid())
    )
  );

-- ---------------------------------------------------------------------------
-- Opt-outs
-- ---------------------------------------------------------------------------
create table public.agent_opt_outs (
  id uuid primary key default gen_random_uuid(),
  org_id uuid not null,
  user_id uuid,
  channel text,
  reason text,
  created_by text,
  created_at timestamptz not null default now(),
  expires_at timestamptz,
  expired_by text,
  -- The request's channel format (request.ts CHANNEL_PATTERN): a row with
  -- 'SMS' or ' sms' could never match a request and would be a silent no-op.
  constraint agent_opt_outs_channel_format check (channel is null or channel ~ '^[a-z][a-z0-9_-]{0,31}$')
);
comment on table public.agent_opt_outs is
  'Opt-out registry. A row is active while expires_at is null or in the future. Rows are expired (ops.expire_opt_out), never deleted: a delete by any role but the table owner is refused, and every insert and update is recorded in ops.opt_out_audit. A member''s erasure keeps their opt-outs (they are the member''s instruction).';
comment on column public.agent_opt_outs.user_id is 'NULL = the whole organization.';
comment on column public.agent_opt_outs.channel is
  'NULL = every channel; otherwise only requests on this channel are refused. Lowercase, as requests carry it (ops.add_opt_out normalises case).';
comment on column public.agent_opt_outs.expires_at is 'NULL = until expired by an operator (ops.expire_opt_out).';
comment on column public.agent_opt_outs.expired_by is 'Who expired the opt-out through ops.expire_opt_out.';
create index agent_opt_outs_lookup_idx on public.agent_opt_outs (org_id, user_id, channel);
create index agent_opt_outs_user_id_idx on public.agent_opt_outs (user_id);
alter table public.agent_opt_outs enable row level security;

-- ---------------------------------------------------------------------------
-- Usage log: one row per request, every outcome, or one row standing for
-- several refusals of one kind (event_count). No foreign keys and no checks
-- beyond success being known and the count being positive, so the insert
-- cannot fail because the session lives in Redis or was never saved.
--
-- Partitioned by day on created_at (20251231120250_ai_agent_usage_scale
-- creates the days ahead and drops whole days past retention). A default
-- partition takes any row whose day has no partition (back-dated, far
-- future), so an insert never fails for want of one. Every unique index
-- holds the partition key: the primary key is (id, created_at) and metering
-- once is (request_id, created_at), which is why the function sends the
-- request's arrival time as created_at (every write of one request carries
-- the same instant).
-- ---------------------------------------------------------------------------
create table public.agent_usage_events (
  id bigint generated always as identity,
  request_id text,
  org_id uuid,
  user_id uuid,
  session_id uuid,
  channel text,
  model text,
  prompt_tokens integer check (prompt_tokens >= 0),
  cached_prompt_tokens integer check (cached_prompt_tokens >= 0),
  completion_tokens integer check (completion_tokens >= 0),
  total_tokens integer check (total_tokens >= 0),
  latency_ms integer,
  success boolean not null,
  error_code text,
  error_message text,
  event_count integer not null default 1 check (event_count >= 1),
  metadata jsonb not null default '{}'::jsonb,
  created_at timestamptz not null default now(),
  primary key (id, created_at)
)
partition by range (created_at);
comment on table public.agent_usage_events is
  'One row per agent-chat request, whatever its outcome; refusals past the first of their kind in an interval are aggregated into one row (event_count). Count requests with sum(event_count), never count(*). Partitioned by UTC day (agent_usage_events_pYYYYMMDD, plus agent_usage_events_default for rows of a day without a partition). Feeds the cost and health views in schema ops through the rollup ops.usage_rollup_minute.';
comment on column public.agent_usage_events.request_id is
  'The server''s request id (x-request-id of the answer). Unique with created_at (the request''s arrival, the partition key) among rows that are not aggregated, so a model call is metered once even when its row is written twice (a save that timed out but committed later).';
comment on column public.agent_usage_events.created_at is
  'When the request arrived (sent by the function, so every write of one request carries the same instant); now() when a writer omits it. The partition key.';
comment on column public.agent_usage_events.event_count is
  'Requests this row stands for: 1, or the number of refusals an aggregated row counts (metadata.aggregated = true).';
comment on column public.agent_usage_events.success is 'true when the assistant answered and the turn was stored.';
comment on column public.agent_usage_events.error_code is
  'The outcome code: the client-facing error code (rate_limit, opt_out, forbidden, session_not_found, budget_exceeded, assistant_disabled, invalid_request, unauthorized, method_not_allowed, openai_error, session_store_error, internal_error), client_closed (the client went away), or anonymous_refusals (the aggregated row of refusals before authentication); NULL on success.';
comment on column public.agent_usage_events.error_message is 'Operator-only detail (upstream status, driver error). Never sent to the client.';
comment on column public.agent_usage_events.cached_prompt_tokens is 'Prompt tokens OpenAI served from its prompt cache (billed at the cached-input price).';
comment on column public.agent_usage_events.latency_ms is 'Time from request arrival to the last byte of the answer, in milliseconds.';
comment on column public.agent_usage_events.metadata is
  'Rate-limit scope, the client IP, the session store, streaming, tokens_estimated, requested_org_id (the org a refused non-member named), aggregated rows'' window and counts.';
create index agent_usage_events_org_created_idx on public.agent_usage_events (org_id, created_at);
create index agent_usage_events_created_idx on public.agent_usage_events (created_at);
create index agent_usage_events_user_id_idx on public.agent_usage_events (user_id);
-- Metered exactly once: the usage inserts are `on conflict do nothing`.
create unique index agent_usage_events_request_id_idx on public.agent_usage_events (request_id, created_at)
  where (metadata -> 'aggregated') is distinct from 'true'::jsonb;
create table public.agent_usage_events_default partition of public.agent_usage_events default;
comment on table public.agent_usage_events_default is
  'Usage rows of a day without its own partition (back-dated past the partitions made, or far ahead). ops.create_usage_partitions moves them into their day when it creates it.';
alter table public.agent_usage_events enable row level security;
alter table public.agent_usage_events_default enable row level security;

-- ---------------------------------------------------------------------------
-- Rate-limit buckets: one row per bucket, written only by
-- ops.consume_rate_limits (next migration, which describes the algorithm).
-- No index on updated_at, so every counter update can be a HOT update (and
-- room on the page for it); the nightly purge scans this small table
-- instead. No generated column and no CHECK constraint: each is parsed and
-- planned again by every statement that writes the row (measured, about
-- 30 µs of a begin turn); the one writer validates limits and windows
-- (at least 1) before it writes, and ops.rate_limit_status shows the scope.
-- ---------------------------------------------------------------------------
create table ops.rate_limits (
  bucket_key text primary key,
  max_requests integer not null,
  window_seconds integer not null,
  slot_ms bigint not null,
  slot_ids bigint[] not null default '{}',
  slot_counts integer[] not null default '{}',
  slot_total integer not null default 0,
  retired boolean not null default false,
  updated_at timestamptz not null default now()
)
with (fillfactor = 90);
comment on table ops.rate_limits is
  'One row per rate-limit bucket (org:<uuid>, user:<uuid>, ip:<address>). Read ops.rate_limit_status for used/remaining/reset; clear with ops.clear_rate_limit(key).';
comment on column ops.rate_limits.max_requests is 'Limit N applied at the last decision (AI_AGENT_RATE_LIMIT_<SCOPE>_MAX_REQUESTS).';
comment on column ops.rate_limits.window_seconds is 'Window W applied at the last decision (AI_AGENT_RATE_LIMIT_WINDOW_SECONDS).';
comment on column ops.rate_limits.slot_ms is 'Width of one slot, W/100 in milliseconds.';
comment on column ops.rate_limits.slot_ids is 'Slot numbers (floor(epoch_ms / slot_ms)) that still hold admissions, ascending.';
comment on column ops.rate_limits.slot_counts is 'Admissions per slot, parallel to slot_ids.';
comment on column ops.rate_limits.slot_total is
  'Sum of slot_counts, kept so a decision only subtracts the slots that left the window instead of re-adding all of them.';
comment on column ops.rate_limits.retired is
  'A row of an org: bucket''s earlier layout (org_bucket_shards changed, ops.reshard_org_bucket): it admits nothing, so a turn that read the old K refuses instead of counting on a row nobody reads any more.';
alter table ops.rate_limits enable row level security;

-- ---------------------------------------------------------------------------
-- Prices
-- ---------------------------------------------------------------------------
create table ops.model_prices (
  model text not null,
  effective_from timestamptz not null default '2000-01-01 00:00:00+00',
  input_usd_per_million numeric(12, 6) not null check (input_usd_per_million >= 0),
  cached_input_usd_per_million numeric(12, 6) not null check (cached_input_usd_per_million >= 0),
  output_usd_per_million numeric(12, 6) not null check (output_usd_per_million >= 0),
  note text,
  created_at timestamptz not null default now(),
  primary key (model, effective_from)
);
comment on table ops.model_prices is
  'USD per million tokens by model, effective from a date. A usage event is priced with the newest row whose effective_from <= its created_at and whose model equals the event''s model or is its prefix before a dated suffix (gpt-4.1-mini matches gpt-4.1-mini-2025-04-14). Edit to match your contract: insert a new row with a later effective_from rather than updating history.';
comment on column ops.model_prices.cached_input_usd_per_million is 'Price of prompt tokens served from OpenAI''s prompt cache.';
alter table ops.model_prices enable row level security;

insert into ops.model_prices (model, input_usd_per_million, cached_input_usd_per_million, output_usd_per_million, note)
values ('gpt-4.1-mini', 0.30, 0.30, 1.20,
        'ASSUMPTION from the operations guide ($0.30 in / $1.20 out per 1M tokens); cached input priced as input until you set your contract price. Edit me.');


-- ---------------------------------------------------------------------------
-- Budgets
-- ---------------------------------------------------------------------------
create table ops.budgets (
  id bigint generated always as identity primary key,
  org_id uuid,
  monthly_usd numeric(14, 6) not null check (monthly_usd > 0),
  mode text not null default 'alert' check (mode in ('alert', 'enforce')),
  note text,
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now()
);
comment on table ops.budgets is
  'Monthly spend budgets in USD: org_id NULL is the global budget, otherwise one org''s. Month-to-date estimated spend above a budget raises a budget alert; in enforce mode agent_begin_turn also refuses new turns (402 budget_exceeded) once spend plus open reservations reach it. Set with ops.budget_set.';
comment on column ops.budgets.mode is
  'alert: raise a budget alert only. enforce: also refuse new turns once month-to-date spend (ops.spend_counters) plus open reservations (ops.token_reservations) reach monthly_usd.';
create unique index budgets_one_per_org_idx
  on ops.budgets ((coalesce(org_id, '00000000-0000-0000-0000-000000000000'::uuid)));
alter table ops.budgets enable row level security;

-- ---------------------------------------------------------------------------
-- Tenant policies, read by agent_begin_turn in its one call. A row is a
-- scope: (org NULL, channel NULL) global, (org NULL, channel) one channel
-- for everyone, (org, NULL) one tenant, (org, channel) one tenant on one
-- channel. A NULL field is "not set here": the tenant row falls back to the
-- global row, which falls back to the environment (AI_AGENT_RATE_LIMIT_*).
-- Written through ops.policy_set / ops.policy_clear / ops.switch_on|off,
-- which audit every change; a change applies to the next request.
-- ---------------------------------------------------------------------------
create table ops.agent_policies (
  id bigint generated always as identity primary key,
  org_id uuid,
  channel text check (channel is null or channel ~ '^[a-z][a-z0-9_-]{0,31}$'),
  enabled boolean,
  disabled_message text check (char_length(disabled_message) <= 500),
  org_max_requests integer check (org_max_requests > 0),
  org_window_seconds integer check (org_window_seconds between 1 and 86400),
  user_max_requests integer check (user_max_requests > 0),
  user_window_seconds integer check (user_window_seconds between 1 and 86400),
  ip_max_requests integer check (ip_max_requests > 0),
  ip_window_seconds integer check (ip_window_seconds between 1 and 86400),
  channel_max_requests integer check (channel_max_requests > 0),
  channel_window_seconds integer check (channel_window_seconds between 1 and 86400),
  org_tokens_per_minute integer check (org_tokens_per_minute > 0),
  org_tokens_per_day integer check (org_tokens_per_day > 0),
  user_tokens_per_minute integer check (user_tokens_per_minute > 0),
  user_tokens_per_day integer check (user_tokens_per_day > 0),
  org_bucket_shards integer check (org_bucket_shards between 1 and 64),
  model text check (model ~ '^[A-Za-z0-9._:/-]{1,128}$'),
  model_fallbacks text check (model_fallbacks ~ '^[A-Za-z0-9._:/-]{1,128}(,[A-Za-z0-9._:/-]{1,128}){0,7}$'),
  note text,
  updated_by text,
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now(),
  -- Request limits and token quotas are per tenant (or the global default);
  -- a channel row holds the channel: bucket and the channel switch.
  constraint agent_policies_scope_fields check (
    channel is null
    or num_nonnulls(org_max_requests, org_window_seconds, user_max_requests, user_window_seconds,
                    ip_max_requests, ip_window_seconds, org_tokens_per_minute, org_tokens_per_day,
                    user_tokens_per_minute, user_tokens_per_day, org_bucket_shards) = 0),
  constraint agent_policies_channel_bucket check (channel is not null or num_nonnulls(channel_max_requests, channel_window_seconds) = 0)
);
comment on table ops.agent_policies is
  'Tenant policies read by agent_begin_turn on every request (no restart): org NULL = global, channel NULL = every channel. Request limits and windows per scope (org/user/ip) override AI_AGENT_RATE_LIMIT_* (tenant row, then global row, then the environment); token quotas per minute and per rolling day per org and per user (NULL = unlimited); a channel row adds a channel: bucket (channel:<name> for everyone, channel:<org>:<name> for one tenant) decided all-or-nothing with the others; enabled = false turns the assistant off (503 assistant_disabled with disabled_message). Change through ops.policy_set, audited in ops.policy_audit.';
comment on column ops.agent_policies.enabled is 'false = assistant off in this scope (global, channel, tenant or tenant+channel): 503 assistant_disabled. NULL or true = on.';
comment on column ops.agent_policies.disabled_message is 'What users are told while enabled = false (for example where to reach human support).';
comment on column ops.agent_policies.channel_max_requests is 'Limit of this row''s channel: bucket per channel_window_seconds (default: the request window).';
comment on column ops.agent_policies.org_bucket_shards is
  'K, for a busy org: the org: bucket is split into K rows (org:<id>#K.0 .. #K.K-1) whose limits add up to the org limit (ops.consume_rate_limits; never over-admits, and a change of K moves the admissions in the window into the new rows, ops.reshard_org_bucket; a turn is refused only when no shard it can take without waiting has room); the org''s token and spend counters are K rows each, summed by every reader; and token quotas and enforced budgets decide under one of K admission locks, so K turns decide at once: an org token quota may then be exceeded by up to (K - 1) turns'' worst case, an enforced org budget overshot by up to K turns'' worst case (1 at K = 1). NULL or 1 = one row, one lock. Set by an operator, or by ops.autoshard_org_buckets for a tenant over 100 turns/s.';
comment on column ops.agent_policies.model is 'The model this scope''s turns call (a tenant''s rows before the global ones, else AI_AGENT_MODEL), at OPENAI_BASE_URL unless AI_AGENT_MODEL_FALLBACKS configures that model''s upstream.';
comment on column ops.agent_policies.model_fallbacks is 'Comma-separated models tried in order after a retryable failure of the model (at most 8), each at its configured upstream or OPENAI_BASE_URL; NULL = AI_AGENT_MODEL_FALLBACKS when the model is the environment''s, else none.';
comment on column ops.agent_policies.org_tokens_per_day is 'Tokens per rolling 24 hours for the org (all its members); the turn reserves its worst case at admission.';
create unique index agent_policies_scope_idx on ops.agent_policies (
  (coalesce(org_id, '00000000-0000-0000-0000-000000000000'::uuid)), (coalesce(channel, '')));
alter table ops.agent_policies enable row level security;

create table ops.policy_audit (
  id bigint generated always as identity primary key,
  at timestamptz not null default now(),
  actor text not null,
  action text not null,
  org_id uuid,
  channel text,
  old_value jsonb,
  new_value jsonb
);
comment on table ops.policy_audit is
  'Every change of a policy, budget or alert mute, and every alert ack: who (the actor the operator function was given, else the session user), when, and the row before and after as JSON. Changes made with plain SQL are recorded too (action direct_insert/update/delete on <table>, by the session user). Written only by ops.audit and its triggers: nobody, service_role included, can insert a row of their own. Never purged.';
create index policy_audit_org_at_idx on ops.policy_audit (org_id, at desc);
alter table ops.policy_audit enable row level security;

-- ---------------------------------------------------------------------------
-- Token quotas and enforced budgets: what is used, and what is on the way.
-- ---------------------------------------------------------------------------
create table ops.token_counters (
  counter_key text not null,
  shard smallint not null default 0 check (shard between 0 and 63),
  slot_ms bigint not null check (slot_ms > 0),
  slot_ids bigint[] not null default '{}',
  slot_tokens bigint[] not null default '{}',
  updated_at timestamptz not null default now(),
  primary key (counter_key, shard)
);
comment on table ops.token_counters is
  'Settled tokens (from usage rows) per sliding window: org:<id>:minute, org:<id>:day, user:<id>:minute, user:<id>:day; 20 slots per window (3 s for the minute, 72 min for the day). A counter is the sum of its rows: a busy org''s are spread over shards (see shard). Written by the usage-row trigger, read by agent_begin_turn against the token quotas.';
comment on column ops.token_counters.shard is
  'Which of the counter''s rows: an org''s settlements go to shard pg_backend_pid() % K (K = org_bucket_shards), so K settling backends do not queue on one row; a user''s counters use shard 0. Every reader sums all the rows of a key, whatever K is now.';
alter table ops.token_counters enable row level security;

create table ops.token_reservations (
  request_id text primary key,
  org_id uuid not null,
  user_id uuid not null,
  model text,
  tokens integer not null check (tokens >= 0),
  usd numeric not null default 0 check (usd >= 0),
  created_at timestamptz not null default now(),
  expires_at timestamptz not null
);
comment on table ops.token_reservations is
  'Open reservations: a turn admitted under a token quota or an enforced budget reserves its worst case (prompt estimate + max output tokens, and its USD at the model''s highest price). The usage row of the request settles it (deletes it; its real tokens go to ops.token_counters). A reservation never settled stops counting at expires_at and is purged later.';
create index token_reservations_org_idx on ops.token_reservations (org_id, expires_at);
create index token_reservations_user_idx on ops.token_reservations (user_id, expires_at);
create index token_reservations_expires_idx on ops.token_reservations (expires_at);
alter table ops.token_reservations enable row level security;

create table ops.spend_counters (
  org_id uuid not null,
  month date not null,
  shard smallint not null default 0 check (shard between 0 and 63),
  usd numeric not null default 0,
  billed_events bigint not null default 0,
  updated_at timestamptz not null default now(),
  primary key (org_id, month, shard)
);
comment on table ops.spend_counters is
  'Month-to-date spend per org (the sum of the org''s rows of the month), added by the usage-row trigger at the price of the row''s insert (ops.event_cost_usd). What enforced budgets compare with; rebuild from the usage log with ops.rebuild_spend_counters after a retroactive price change.';
comment on column ops.spend_counters.shard is
  'Which of the org''s rows of the month: settlements go to shard pg_backend_pid() % K (K = org_bucket_shards), so a busy org''s finishes do not queue on one row. Readers sum every shard present, so changing K loses and doubles nothing.';
alter table ops.spend_counters enable row level security;

-- ---------------------------------------------------------------------------
-- Alerts: settings of the recorded check, and the alerts it records.
-- ---------------------------------------------------------------------------
create table ops.alert_settings (
  id boolean primary key default true check (id),
  min_requests integer not null default 10 check (min_requests > 0),
  success_threshold numeric(5, 4) not null default 0.98 check (success_threshold > 0 and success_threshold <= 1),
  budget_warning_ratios numeric[] not null default '{0.8}'
    check (cardinality(budget_warning_ratios) <= 10 and 0 < all (budget_warning_ratios) and 1 > all (budget_warning_ratios)),
  latency_p95_ms integer check (latency_p95_ms is null or latency_p95_ms > 0),
  updated_at timestamptz not null default now()
);
comment on table ops.alert_settings is
  'One row: what the alert conditions compare with (ops.evaluate_alerts). Notifications go out through the agent-alerts Edge Function, configured by its secrets.';
comment on column ops.alert_settings.min_requests is 'Served requests a 15-minute window (global, or one org''s) needs before its success rate can alert (no paging on 1 failure out of 2).';
comment on column ops.alert_settings.budget_warning_ratios is 'Early budget warnings: a budget_warning alert once month-to-date spend reaches this share of a budget (default 80%), before the budget alert at 100%.';
comment on column ops.alert_settings.latency_p95_ms is 'Optional: a latency_p95 alert when the 95th percentile latency of answered requests over the trailing 15 minutes is above this; NULL = off.';
insert into ops.alert_settings default values;
alter table ops.alert_settings enable row level security;

create table ops.alert_events (
  id bigint generated always as identity primary key,
  kind text not null check (kind in ('success_rate', 'budget', 'budget_warning', 'latency_p95', 'delivery_failed', 'unpriced_model')),
  subject text not null,
  window_start timestamptz not null,
  observed numeric not null,
  threshold numeric not null,
  details jsonb not null default '{}'::jsonb,
  raised_at timestamptz not null,
  last_seen_at timestamptz not null,
  resolved_at timestamptz,
  acknowledged_at timestamptz,
  acknowledged_by text
);
comment on table ops.alert_events is
  'Alerts raised by ops.check_alerts: success_rate (subject global or org:<id>), budget and budget_warning (global or org:<id>), latency_p95 (global), delivery_failed (destination:<name>, raised by the delivery of a notification that ran out of attempts), and unpriced_model (model:<reported name>). One open row per kind and subject; resolved_at is set when the condition clears. Rows are history: never deleted by the purge.';
comment on column ops.alert_events.window_start is
  'success_rate: when the alert was first seen (its window is the trailing 15 minutes at each check); budget: the first day of the month.';
comment on column ops.alert_events.observed is 'Latest observed value: success rate (0..1) or month-to-date USD.';
comment on column ops.alert_events.last_seen_at is 'Last check at which the condition still held.';
comment on column ops.alert_events.acknowledged_at is 'Set by ops.alert_ack: someone is on it. The alert stays open until its condition clears.';
create unique index alert_events_one_open_idx on ops.alert_events (kind, subject) where resolved_at is null;
create index alert_events_raised_at_idx on ops.alert_events (raised_at desc);
alter table ops.alert_events enable row level security;

create table ops.alert_mutes (
  kind text not null check (kind in ('success_rate', 'budget', 'budget_warning', 'latency_p95', 'delivery_failed', 'unpriced_model')),
  subject text not null,
  muted_until timestamptz not null,
  reason text,
  muted_by text not null,
  created_at timestamptz not null default now(),
  primary key (kind, subject)
);
comment on table ops.alert_mutes is
  'Muted alerts (ops.alert_mute): while now() < muted_until, ops.check_alerts raises no new event for this kind and subject and forwards nothing for it; an open event keeps being refreshed and resolves as usual.';
alter table ops.alert_mutes enable row level security;

-- ---------------------------------------------------------------------------
-- Privileges of every table above, one statement per kind (org_memberships,
-- when this file creates it, has its own in its block). Checked by
-- supabase/tests/database/004_privileges_inventory.test.sql.
-- ---------------------------------------------------------------------------
-- Deny: Supabase's default privileges on public, and PUBLIC's.
revoke all on table
  public.agent_sessions, public.agent_session_messages, public.agent_opt_outs, public.agent_usage_events,
  public.agent_usage_events_default, ops.rate_limits, ops.model_prices, ops.budgets, ops.agent_policies, ops.policy_audit, ops.token_counters,
  ops.token_reservations, ops.spend_counters, ops.alert_settings, ops.alert_events, ops.alert_mutes
from public, anon, authenticated;
revoke all on sequence public.agent_session_messages_id_seq, public.agent_usage_events_id_seq
from public, anon, authenticated;
-- The Edge Function's role (operators act as it too).
grant select, insert, update, delete on table
  public.agent_sessions, public.agent_session_messages, public.agent_usage_events,
  ops.rate_limits, ops.model_prices, ops.budgets, ops.agent_policies, ops.token_counters,
  ops.token_reservations, ops.spend_counters, ops.alert_mutes
to service_role;
grant select, insert, update on table ops.alert_events to service_role;
-- Opt-outs are history: expired, never deleted nor reassigned (20251231120800_ai_agent_members_data
-- also refuses a delete by any role but the owner, and audits every change).
revoke update, delete, truncate on table public.agent_opt_outs from service_role;
grant select, insert on table public.agent_opt_outs to service_role;
-- Whose and what an opt-out is never changes (its history is read by id and
-- user): it is expired (ops.expire_opt_out) and its reason may be noted.
grant update (reason, expires_at, expired_by) on table public.agent_opt_outs to service_role;
grant select, update on table ops.alert_settings to service_role;
-- The audit is written only by ops.audit and its triggers.
grant select on table ops.policy_audit, public.org_memberships to service_role;
-- A member reads its own sessions and their messages (the RLS policies above).
grant select on table public.agent_sessions, public.agent_session_messages to authenticated;
