-- Every privilege anon and authenticated hold on the project's schemas,
-- compared with an explicit allow-list: schemas, tables, views, sequences,
-- columns and functions. Supabase's default privileges grant both roles
-- everything on each new object in public, so an object that forgets its
-- revoke (an identity sequence, where setval to the maximum would stop every
-- insert) shows up here as an extra row.
--
-- The project's schemas are every schema but the platform's (listed below),
-- so a new schema is inventoried without editing this file.
begin;
\ir ../support/pgtap-helpers.psql
select plan(10);

-- setup: the effective privileges (has_*_privilege: direct, through PUBLIC
-- or through a role) of anon and authenticated, one row each.
create temp table t_project_schemas as
select n.oid, n.nspname
from pg_namespace n
where n.nspname !~ '^pg_'
  and n.nspname not in (
    'information_schema', 'auth', 'extensions', 'cron', 'supabase_migrations', 'tests',
    'storage', 'graphql', 'graphql_public', 'realtime', '_realtime', 'vault', 'net',
    'pgsodium', 'pgsodium_masks', 'pgbouncer', 'supabase_functions', '_analytics', 'pgmq'
  );

create temp table t_held (kind text, object text, privilege text, grantee text);
insert into t_held
select 'schema', s.nspname, p.privilege, r.role
from t_project_schemas s
cross join (values ('USAGE'), ('CREATE')) p (privilege)
cross join (values ('anon'), ('authenticated')) r (role)
where has_schema_privilege(r.role, s.oid, p.privilege);

insert into t_held
select case c.relkind when 'v' then 'view' when 'm' then 'materialized view' when 'f' then 'foreign table' else 'table' end,
       s.nspname || '.' || c.relname, p.privilege, r.role
from pg_class c
join t_project_schemas s on s.oid = c.relnamespace
cross join (values ('SELECT'), ('INSERT'), ('UPDATE'), ('DELETE'), ('TRUNCATE'), ('REFERENCES'), ('TRIGGER')) p (privilege)
cross join (values ('anon'), ('authenticated')) r (role)
where c.relkind in ('r', 'p', 'v', 'm', 'f')
  and has_table_privilege(r.role, c.oid, p.privilege);

insert into t_held
select 'sequence', s.nspname || '.' || c.relname, p.privilege, r.role
from pg_class c
join t_project_schemas s on s.oid = c.relnamespace
cross join (values ('USAGE'), ('SELECT'), ('UPDATE')) p (privilege)
cross join (values ('anon'), ('authenticated')) r (role)
where c.relkind = 'S'
  and has_sequence_privilege(r.role, c.oid, p.privilege);

-- Column grants exist only in attacl (a table grant is counted above).
insert into t_held
select 'column', s.nspname || '.' || c.relname || '.' || a.attname, x.privilege_type,
       case when x.grantee = 0 then 'PUBLIC' else x.grantee::regrole::text end
from pg_attribute a
join pg_class c on c.oid = a.attrelid
join t_project_schemas s on s.oid = c.relnamespace
cross join lateral aclexplode(a.attacl) x
where a.attacl is not null
  and (x.grantee = 0 or x.grantee in ('anon'::regrole, 'authenticated'::regrole));

insert into t_held
select case p.prokind when 'p' then 'procedure' else 'function' end,
       p.oid::regprocedure::text, 'EXECUTE', r.role
from pg_proc p
join t_project_schemas s on s.oid = p.pronamespace
cross join (values ('anon'), ('authenticated')) r (role)
where has_function_privilege(r.role, p.oid, 'EXECUTE');

-- test: the inventory matches the allow-list exactly
select set_eq(
  $$select kind, object, privilege, grantee from t_held$$,
  $$values
    -- The Data API needs schema public; nothing in it is callable.
    ('schema', 'public', 'USAGE', 'anon'),
    ('schema', 'public', 'USAGE', 'authenticated'),
    -- A member reads its own sessions, their messages and its memberships (RLS).
    ('table', 'public.agent_sessions', 'SELECT', 'authenticated'),
    ('table', 'public.agent_session_messages', 'SELECT', 'authenticated'),
    ('table', 'public.org_memberships', 'SELECT', 'authenticated')
  $$,
  'anon and authenticated hold exactly the allow-listed privileges on the project''s schemas');

select ok((select count(*) from t_project_schemas where nspname in ('public', 'ops')) = 2,
  'the inventory covers public and ops');
select ok((select count(*) from t_held where kind = 'sequence') = 0,
  'no sequence privilege: setval/nextval on the identity sequences is the service''s alone');
select ok((select count(*) from t_held where kind in ('function', 'procedure')) = 0,
  'no function or procedure is executable by anon or authenticated');

-- No default privilege in a project schema (public's are the platform's, and
-- revoked object by object) hands anon or authenticated the next object.
select is_empty(
  $$select d.defaclnamespace::regnamespace::text || ':' || d.defaclobjtype::text || ':' || x.grantee::regrole::text
    from pg_default_acl d
    join t_project_schemas s on s.oid = d.defaclnamespace
    cross join lateral aclexplode(d.defaclacl) x
    where s.nspname <> 'public' and x.grantee in ('anon'::regrole, 'authenticated'::regrole)$$,
  'no default privilege for anon or authenticated in a project schema other than public');

-- test: the grants gathered at the end of each migration reach every object
-- the Edge Function's role needs (trigger functions run as the trigger, not called)
select is_empty(
  $$select p.oid::regprocedure::text from pg_proc p join pg_namespace n on n.oid = p.pronamespace
    where n.nspname in ('public', 'ops') and p.prorettype <> 'trigger'::regtype
      and not has_function_privilege('service_role', p.oid, 'execute')$$,
  'service_role may execute every function in public and ops');
select is_empty(
  $$select c.oid::regclass::text from pg_class c join pg_namespace n on n.oid = c.relnamespace
    where n.nspname in ('public', 'ops') and c.relkind in ('r', 'p', 'v')
      and not has_table_privilege('service_role', c.oid, 'select')$$,
  'service_role may read every table and view in public and ops');

-- test: the denials, as each role
select tests.authenticate_as_anon();
select throws_ok($$ select setval('public.agent_usage_events_id_seq', 9223372036854775807) $$,
  '42501', null, 'anon cannot setval the usage log''s identity sequence');
select tests.clear_authentication();
select tests.authenticate_as(tests.create_user());
select throws_ok($$ select setval('public.agent_session_messages_id_seq', 9223372036854775807) $$,
  '42501', null, 'authenticated cannot setval the messages'' identity sequence');
select throws_ok($$ select nextval('public.agent_usage_events_id_seq') $$,
  '42501', null, 'nor draw from it');
select tests.clear_authentication();

select * from finish();
rollback;
