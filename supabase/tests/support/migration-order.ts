/**
 * Each migration calls only what an earlier one (or itself) defines.
 *
 * Postgres checks the body of a `language sql` function and of a view when
 * it is created, but not a plpgsql body nor a pg_cron command: those name
 * functions and tables that only need to exist when they run, so a
 * migration can call what a later one defines and still apply. Run after
 * each migration (migrate's `afterEach`), `unresolvedReferences` lists every
 * schema-qualified name in a function body or a pg_cron command of the
 * project's schemas that is not (yet) a function, table, view or type
 * (line comments inside bodies are left out).
 */
import { run } from "./tools.ts";

/** Schemas whose qualified names are checked (a name in another schema, say net., is left alone). */
const CHECKED_SCHEMAS = ["ops", "public", "private", "auth", "extensions", "cron"];

const query = (withCron: boolean) => `
with bodies as (
  -- Line comments left out: they may name what comes later.
  select p.oid::regprocedure::text as object, regexp_replace(p.prosrc, '--[^\n]*', '', 'g') as body
  from pg_proc p
  join pg_namespace n on n.oid = p.pronamespace
  join pg_language l on l.oid = p.prolang
  where l.lanname in ('plpgsql', 'sql')
    and n.nspname not in ('pg_catalog', 'information_schema', 'extensions', 'auth', 'cron', 'tests')
    and not exists (select 1 from pg_depend d where d.objid = p.oid and d.deptype = 'e')
  ${withCron ? "union all select 'pg_cron job ' || j.jobname, j.command from cron.job j" : ""}
),
refs as (
  select distinct b.object, m[1] as schema_name, m[2] as name
  from bodies b
  cross join lateral regexp_matches(b.body, '\\m(${
  CHECKED_SCHEMAS.join("|")
})\\.([a-z_][a-z0-9_]*)', 'g') m
)
select r.object || ' -> ' || r.schema_name || '.' || r.name
from refs r
where not exists (select 1 from pg_proc p join pg_namespace n on n.oid = p.pronamespace
                  where n.nspname = r.schema_name and p.proname = r.name)
  and not exists (select 1 from pg_class c join pg_namespace n on n.oid = c.relnamespace
                  where n.nspname = r.schema_name and c.relname = r.name)
  and not exists (select 1 from pg_type t join pg_namespace n on n.oid = t.typnamespace
                  where n.nspname = r.schema_name and t.typname = r.name)
order by 1`;

/** "object -> schema.name" for each name a body refers to that does not exist in the database at `url`. */
export async function unresolvedReferences(url: string): Promise<string[]> {
  // One psql run: cron.job is read only where pg_cron is installed.
  const script = `select to_regclass('cron.job') is not null as has_cron \\gset
\\if :has_cron
${query(true)};
\\else
${query(false)};
\\endif
`;
  const res = await run("psql", [url, "-X", "-v", "ON_ERROR_STOP=1", "-Atq"], { stdin: script });
  if (res.code !== 0) throw new Error(res.stderr.trim());
  return res.stdout.split("\n").filter(Boolean);
}

/** For migrate's `afterEach`: throws naming the migration and what it calls too early. */
export function checkReferencesAfter(url: string): (file: string) => Promise<void> {
  return async (file) => {
    const missing = await unresolvedReferences(url);
    if (missing.length > 0) {
      throw new Error(
        `after ${file}, these bodies name what no migration up to it defines (define it in an earlier migration):\n  ${
          missing.join("\n  ")
        }`,
      );
    }
  };
}
