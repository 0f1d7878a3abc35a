-- The checks of Supabase's database linter (splinter) that apply to this
-- schema, written here as queries over the catalog: none may find anything
-- (is_empty, which lists what it found; no order is assumed).
begin;
\ir ../support/pgtap-helpers.psql
select plan(7);

-- 0001 unindexed foreign keys: every foreign key has an index that starts with its columns.
select is_empty(
  $$select c.conrelid::regclass::text || '.' || c.conname
    from pg_constraint c join pg_namespace n on n.oid = c.connamespace
    where c.contype = 'f' and n.nspname in ('public', 'ops')
      and not exists (
        select 1 from pg_index i
        where i.indrelid = c.conrelid
          and (i.indkey::int2[])[0:array_length(c.conkey, 1) - 1] = c.conkey)$$,
  '0001: every foreign key is indexed');

-- 0003 auth RLS initplan: policies call auth.uid()/auth.jwt() through a sub-select.
select is_empty(
  $$select p.schemaname || '.' || p.tablename || ':' || p.policyname
    from pg_policies p
    where p.schemaname in ('public', 'ops')
      and (coalesce(p.qual, '') || coalesce(p.with_check, '')) ~ 'auth\.(uid|jwt|role)\(\)'
      and (coalesce(p.qual, '') || coalesce(p.with_check, '')) !~* '\(\s*select\s+auth\.(uid|jwt|role)\(\)'$$,
  '0003: no policy re-evaluates auth.uid() per row');

-- 0006 multiple permissive policies for one role and action.
select is_empty(
  $$select p.schemaname || '.' || p.tablename || ':' || r.role || ':' || p.cmd
    from pg_policies p cross join lateral unnest(p.roles) as r(role)
    where p.schemaname in ('public', 'ops') and p.permissive = 'PERMISSIVE'
    group by 1 having count(*) > 1$$,
  '0006: at most one permissive policy per table, role and action');

-- 0007/0013: a policy on a table without RLS, or a public table without RLS.
select is_empty(
  $$select distinct p.schemaname || '.' || p.tablename
    from pg_policies p join pg_class c on c.oid = (quote_ident(p.schemaname) || '.' || quote_ident(p.tablename))::regclass
    where p.schemaname in ('public', 'ops') and not c.relrowsecurity$$,
  '0007: no policy sits on a table without RLS');

-- 0009 duplicate indexes.
select is_empty(
  $$select a.indexrelid::regclass::text
    from pg_index a join pg_index b on a.indrelid = b.indrelid and a.indexrelid > b.indexrelid
     and a.indkey = b.indkey and a.indclass = b.indclass and coalesce(pg_get_expr(a.indpred, a.indrelid), '') = coalesce(pg_get_expr(b.indpred, b.indrelid), '')
     and coalesce(pg_get_expr(a.indexprs, a.indrelid), '') = coalesce(pg_get_expr(b.indexprs, b.indrelid), '')
   join pg_class c on c.oid = a.indrelid join pg_namespace n on n.oid = c.relnamespace
   where n.nspname in ('public', 'ops')$$,
  '0009: no duplicate indexes');

-- 0014 extension in public.
select is_empty(
  $$select e.extname from pg_extension e join pg_namespace n on n.oid = e.extnamespace
    where n.nspname = 'public'$$,
  '0014: no extension installed in public');

-- 0016/0017: no materialized view or foreign table exposed through the Data API.
select is_empty(
  $$select c.oid::regclass::text from pg_class c join pg_namespace n on n.oid = c.relnamespace
    where n.nspname = 'public' and c.relkind in ('m', 'f')$$,
  '0016/0017: no materialized view or foreign table in public');

select * from finish();
rollback;
