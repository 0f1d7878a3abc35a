/**
 * The schema the migrations build, as text that can be compared: pg_dump
 * --schema-only of `public` and `ops` (tables, columns, constraints, indexes,
 * functions, views, types, comments, grants, policies, triggers, RLS), plus
 * what pg_dump leaves out: seeded rows and pg_cron jobs.
 *
 *   deno run -A supabase/tests/support/schema-dump.ts                 print the dump of supabase/migrations
 *   deno run -A supabase/tests/support/schema-dump.ts --against <rev> diff it against the migrations of a git revision
 *
 * With --against, each side is migrated into its own throwaway PostgreSQL and
 * the output is `diff -u old new`; the exit code is 0 when they are equal, 1
 * when they differ. Used once to prove that squashing the pre-release
 * migrations changed nothing but what was meant (docs/architecture.md).
 */
import { parseArgs } from "node:util";
import { startPostgres } from "./postgres.ts";
import { migrate, migrationsDir } from "./migrate.ts";
import { findPostgresTools, run } from "./tools.ts";

const root = new URL("../../../", import.meta.url).pathname;

const extras = `
\\echo -- seeded rows
select format('%s: %s', 'ops.model_prices', to_jsonb(p) - 'created_at') from ops.model_prices p order by p.model, p.effective_from;
select format('%s: %s', 'ops.alert_settings', to_jsonb(s) - 'updated_at') from ops.alert_settings s;
\\echo -- pg_cron jobs
select format('%s %s %s', j.jobname, j.schedule, j.command) from cron.job j order by j.jobname;
`;

/** Migrates a fresh database from `dir` and returns its dump. */
export async function dumpSchema(dir: string): Promise<string> {
  const tools = await findPostgresTools();
  const pg = await startPostgres({ fast: true });
  try {
    await migrate(pg.url, { pgCron: pg.hasPgCron, migrationsDir: dir });
    const dump = await run(`${tools.bin}/pg_dump`, [
      "--schema-only",
      "--no-owner",
      "--schema=public",
      "--schema=ops",
      pg.url,
    ]);
    if (dump.code !== 0) throw new Error(`pg_dump failed: ${dump.stderr}`);
    const rest = await run("psql", [pg.url, "-X", "-At", "-v", "ON_ERROR_STOP=1"], {
      stdin: pg.hasPgCron ? extras : extras.split("\\echo -- pg_cron jobs")[0]!,
    });
    if (rest.code !== 0) throw new Error(`catalog queries failed: ${rest.stderr}`);
    // Left out: the header's versions (the same on both sides) and the random
    // key of pg_dump's \restrict guard (new on every run).
    return dump.stdout.split("\n")
      .filter((l) => !/^(-- Dumped |\\restrict |\\unrestrict )/.test(l))
      .join("\n") +
      rest.stdout;
  } finally {
    await pg.stop();
  }
}

/** Writes the migrations of a git revision into a temporary folder. */
async function migrationsAt(rev: string): Promise<string> {
  const list = await run("git", [
    "-C",
    root,
    "ls-tree",
    "--name-only",
    rev,
    "supabase/migrations/",
  ]);
  if (list.code !== 0) throw new Error(`git ls-tree ${rev}: ${list.stderr.trim()}`);
  const dir = await Deno.makeTempDir({ prefix: "agent-chat-migrations-" });
  for (const path of list.stdout.split("\n").filter((p) => p.endsWith(".sql"))) {
    const file = await run("git", ["-C", root, "show", `${rev}:${path}`]);
    if (file.code !== 0) throw new Error(`git show ${rev}:${path}: ${file.stderr.trim()}`);
    await Deno.writeTextFile(`${dir}/${path.split("/").pop()}`, file.stdout);
  }
  return dir;
}

if (import.meta.main) {
  const { values } = parseArgs({
    args: Deno.args,
    options: { against: { type: "string" }, help: { type: "boolean", short: "h" } },
  });
  if (values.help) {
    console.log("usage: schema-dump.ts [--against <git revision>]");
    Deno.exit(0);
  }
  const current = await dumpSchema(migrationsDir);
  if (!values.against) {
    console.log(current);
    Deno.exit(0);
  }
  const oldDir = await migrationsAt(values.against);
  const work = await Deno.makeTempDir({ prefix: "agent-chat-schema-" });
  let code = 1;
  try {
    await Deno.writeTextFile(`${work}/old.sql`, await dumpSchema(oldDir));
    await Deno.writeTextFile(`${work}/new.sql`, current);
    const diff = await run("diff", [
      "-u",
      `--label=${values.against}`,
      "--label=working tree",
      `${work}/old.sql`,
      `${work}/new.sql`,
    ]);
    console.log(diff.code === 0 ? "the two schemas are identical" : diff.stdout);
    code = diff.code === 0 ? 0 : 1;
  } finally {
    await Deno.remove(oldDir, { recursive: true });
    await Deno.remove(work, { recursive: true });
  }
  Deno.exit(code);
}
