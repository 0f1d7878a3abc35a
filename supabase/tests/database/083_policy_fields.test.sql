-- The policy fields are listed once, in ops.policy_fields(): the list cannot
-- drift from the table, from the scope rule or from what agent_begin_turn
-- reads, and ops.policy_set writes every field it lists. Compared as sets.
begin;
\ir ../support/pgtap-helpers.psql
select plan(5);

-- test: the list is the table's columns but its key and bookkeeping
select set_eq(
  $$select unnest(ops.policy_fields())$$,
  $$select a.attname::text from pg_attribute a
    where a.attrelid = 'ops.agent_policies'::regclass and a.attnum > 0 and not a.attisdropped
      and a.attname not in ('id', 'org_id', 'channel', 'updated_by', 'created_at', 'updated_at')$$,
  'ops.policy_fields() lists every settable column of ops.agent_policies, and nothing else');

-- test: the scope rule (a channel row holds no tenant field) names exactly the org/user/ip fields
select is_empty(
  $$select f from unnest(ops.policy_fields()) f
    cross join (select pg_get_constraintdef(c.oid) as def from pg_constraint c
                where c.conrelid = 'ops.agent_policies'::regclass and c.conname = 'agent_policies_scope_fields') c
    where (c.def ~ ('\m' || f || '\M')) <> (f ~ '^(org|user|ip)_')$$,
  'agent_policies_scope_fields covers exactly the org, user and ip fields');

-- test: agent_begin_turn reads every field (note is for people)
select is_empty(
  $$select f from unnest(ops.policy_fields()) f
    where f <> 'note'
      and (select p.prosrc from pg_proc p where p.oid = 'public.agent_begin_turn'::regproc) !~ ('\mp\.' || f || '\M')$$,
  'agent_begin_turn reads every policy field');

-- test: ops.policy_set writes every field it lists
select tests.authenticate_as_service_role();
select ops.policy_set(null, null,
  (select jsonb_object_agg(f, case when f = 'enabled' then 'false'::jsonb
                                   when f in ('disabled_message', 'note') then to_jsonb(f)
                                   when f like '%window_seconds' then '30'::jsonb
                                   else '7'::jsonb end)
   from unnest(ops.policy_fields()) f where f not like 'channel_%'),
  'drift-test');
select is_empty(
  $$select f from unnest(ops.policy_fields()) f, ops.agent_policies p
    where p.org_id is null and p.channel is null and f not like 'channel_%' and to_jsonb(p) -> f = 'null'::jsonb$$,
  'policy_set stores every tenant field it is given');
select ops.policy_set(null, 'drift', '{"channel_max_requests": 3, "channel_window_seconds": 30}', 'drift-test');
select is((select (channel_max_requests, channel_window_seconds)::text from ops.agent_policies where channel = 'drift'),
  '(3,30)', 'and the channel fields on a channel row');
select tests.clear_authentication();

select * from finish();
rollback;
