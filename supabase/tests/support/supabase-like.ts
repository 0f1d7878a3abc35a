/**
 * A Supabase-like database for the pgTAP tests: its own throwaway
 * PostgreSQL whose superuser is supabase_admin, the platform of
 * supabase-like.psql (Supabase's roles, `extensions` schema, auth schema and
 * default grants, postgres not a superuser), the migrations applied as
 * postgres one by one, each followed by the check that it calls only what
 * an earlier one defines (migration-order.ts), and pgTAP enabled the way
 * `supabase test db` enables it before it runs pg_prove.
 */
import { startPostgres } from "./postgres.ts";
import { migrate } from "./migrate.ts";
import { checkReferencesAfter } from "./migration-order.ts";
import { run } from "./tools.ts";

const platformFile = new URL("./supabase-like.psql", import.meta.url).pathname;

export interface SupabaseLikeDatabase {
  /** postgres@…: the role `supabase test db` and `supabase db push` connect as. */
  url: string;
  stop(): Promise<void>;
}

async function psql(url: string, args: string[]): Promise<void> {
  const res = await run("psql", [url, "-X", "-q", "-v", "ON_ERROR_STOP=1", ...args]);
  if (res.code !== 0) throw new Error(res.stderr.trim() || res.stdout.trim());
}

export async function startSupabaseLike(
  log: (line: string) => void = () => {},
): Promise<SupabaseLikeDatabase> {
  const pg = await startPostgres({ fast: true, superuser: "supabase_admin" });
  try {
    await psql(pg.url, [
      "--single-transaction",
      "-v",
      `pg_cron=${pg.hasPgCron}`,
      "-f",
      platformFile,
    ]);
    const url = pg.url.replace("//supabase_admin@", "//postgres@");
    await migrate(url, { pgCron: false, log, afterEach: checkReferencesAfter(url) });
    // The Supabase CLI runs `create extension if not exists pgtap with schema
    // extensions` as postgres before pg_prove (supautils lets postgres create
    // it on the platform; here the superuser does).
    await psql(pg.url, ["-c", "create extension if not exists pgtap with schema extensions"]);
    log(`supabase-like database ${url} (superuser supabase_admin; postgres is not one)`);
    return { url, stop: () => pg.stop() };
  } catch (error) {
    await pg.stop();
    throw error;
  }
}
