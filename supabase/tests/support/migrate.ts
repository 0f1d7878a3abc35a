/**
 * Prepares a database the way a Supabase project is before `supabase db
 * push`: the platform bootstrap (once), then every pending migration in
 * name order, each in its own transaction, recorded in
 * supabase_migrations.schema_migrations as the Supabase CLI does.
 * Stops at the first error, naming the file and the line.
 */
import { run } from "./tools.ts";

const root = new URL("../../../", import.meta.url).pathname;
export const migrationsDir = `${root}supabase/migrations`;
const bootstrapFile = new URL("./bootstrap.psql", import.meta.url).pathname;

export class MigrationError extends Error {}

async function psql(url: string, args: string[]): Promise<string> {
  const res = await run("psql", [url, "-X", "-v", "ON_ERROR_STOP=1", "-q", ...args]);
  if (res.code !== 0) throw new MigrationError(res.stderr.trim() || res.stdout.trim());
  return res.stdout;
}

export async function listMigrations(dir = migrationsDir): Promise<string[]> {
  const files: string[] = [];
  for await (const entry of Deno.readDir(dir)) {
    if (entry.isFile && /^\d{14}_.+\.sql$/.test(entry.name)) files.push(entry.name);
  }
  return files.sort();
}

export async function migrate(
  url: string,
  options: {
    pgCron: boolean;
    log?: (line: string) => void;
    migrationsDir?: string;
    /** Runs after each applied migration (a check of what it left); a throw stops the run. */
    afterEach?: (file: string) => Promise<void>;
  } = { pgCron: false },
): Promise<string[]> {
  const log = options.log ?? (() => {});
  const dir = options.migrationsDir ?? migrationsDir;
  // A database whose platform is already there (supabase-like.psql) is not bootstrapped again.
  const bootstrapped =
    (await psql(url, ["-Atc", "select to_regnamespace('auth') is not null"])).trim() === "t";
  if (!bootstrapped) {
    await psql(url, ["--single-transaction", "-f", bootstrapFile]);
    if (options.pgCron) {
      await psql(url, ["-c", "create extension if not exists pg_cron with schema pg_catalog"]);
    }
    log("bootstrapped Supabase roles, auth schema and extensions");
  }
  await psql(url, [
    "-c",
    "create schema if not exists supabase_migrations; " +
    "create table if not exists supabase_migrations.schema_migrations " +
    "(version text primary key, statements text[], name text)",
  ]);
  const applied = new Map(
    (await psql(url, ["-Atc", "select version, name from supabase_migrations.schema_migrations"]))
      .split("\n").filter(Boolean).map((line) => line.split("|") as [string, string]),
  );
  const files = await listMigrations(dir);
  // As `supabase db push` does: a database that applied migrations this
  // folder no longer has (a squash, another branch) is not migrated further.
  const stale = [...applied].filter(([version, name]) => !files.includes(`${version}_${name}.sql`));
  if (stale.length > 0) {
    throw new MigrationError(
      `the database applied migrations that are not in ${dir}: ${
        stale.map(([v, n]) => `${v}_${n}`).join(", ")
      }. Recreate it (for npm run dev: delete .local/postgres).`,
    );
  }
  const done: string[] = [];
  for (const file of files) {
    const version = file.slice(0, 14);
    if (applied.has(version)) continue;
    const name = file.slice(15, -4);
    try {
      await psql(url, [
        "--single-transaction",
        "-f",
        `${dir}/${file}`,
        "-c",
        `insert into supabase_migrations.schema_migrations (version, name) values ('${version}', '${name}')`,
      ]);
    } catch (error) {
      // psql names the file and line: "psql:/path/file.sql:42: ERROR: ..."
      throw new MigrationError(`migration ${file} failed:\n${(error as Error).message}`);
    }
    log(`applied ${file}`);
    done.push(file);
    await options.afterEach?.(file);
  }
  return done;
}
