/**
 * `deno task test`: runs the pgTAP files with pg_prove against a Supabase-like
 * database (supabase-like.ts: Supabase's roles, grants and `extensions`
 * schema, postgres not a superuser, each migration checked to call only what
 * an earlier one defines), then starts a throwaway PostgreSQL (migrated) and
 * Redis for the Deno tests, and ends with one line `N passed, N failed`.
 * Exits non-zero on any failure.
 *
 *   --only db | functions   run one half
 *   <files or folders>      the Deno tests to run (default supabase/tests/functions/)
 */
import { type LocalStack, startLocalStack } from "./local-stack.ts";
import { startSupabaseLike, type SupabaseLikeDatabase } from "./supabase-like.ts";
import { MissingToolError, which } from "./tools.ts";
import { choiceFlag, commandLine } from "../../../scripts/cli.ts";

const root = new URL("../../../", import.meta.url).pathname;
const { only, paths } = commandLine({
  usage: `usage: deno task test [--only db|functions] [test files or folders]

Runs the pgTAP tests with pg_prove (as \`supabase test db\` does) on a Supabase-like
database, then the Deno tests on a throwaway PostgreSQL and Redis, and prints
"N passed, N failed".`,
  options: { only: { type: "string" } },
  positionals: true,
}, ({ values, positionals }) => ({
  only: values.only === undefined ? null : choiceFlag(values.only, "--only", ["db", "functions"]),
  paths: positionals.length > 0 ? positionals : ["supabase/tests/functions/"],
}));

interface Tally {
  passed: number;
  failed: number;
}

// The child running now (pg_prove or deno test): stopped first when the
// stack stops (on Ctrl-C, before Postgres and Redis go).
let current: Deno.ChildProcess | null = null;
async function stopCurrent() {
  const child = current;
  if (!child) return;
  try {
    child.kill("SIGTERM");
  } catch { /* already gone */ }
  await child.status;
}

async function streamed(
  cmd: string,
  args: string[],
  env: Record<string, string>,
): Promise<{ code: number; text: string }> {
  const child = new Deno.Command(cmd, {
    args,
    env,
    cwd: root,
    stdout: "piped",
    stderr: "inherit",
    stdin: "null",
  }).spawn();
  current = child;
  let text = "";
  const decoder = new TextDecoder();
  for await (const chunk of child.stdout) {
    const s = decoder.decode(chunk, { stream: true });
    text += s;
    await Deno.stdout.write(chunk);
  }
  const status = await child.status;
  current = null;
  return { code: status.code, text };
}

async function runPgTap(url: string): Promise<Tally> {
  const pgProve = await which("pg_prove");
  if (!pgProve) {
    throw new MissingToolError(
      "pg_prove not found. Install the Debian packages: apt-get install postgresql-15-pgtap libtap-parser-sourcehandler-pgtap-perl",
    );
  }
  // Exactly the command `supabase test db` runs, connected through the same
  // PG* variables, as postgres: every .sql/.pg file under supabase/tests is a pgTAP test.
  const u = new URL(url);
  const res = await streamed(pgProve, ["--ext", ".pg", "--ext", ".sql", "-r", "supabase/tests"], {
    PGHOST: u.hostname,
    PGPORT: u.port,
    PGUSER: decodeURIComponent(u.username),
    PGDATABASE: "postgres",
    PGOPTIONS: "--client-min-messages=warning",
  });
  const ran = Number(/Tests=(\d+)/.exec(res.text)?.[1] ?? 0);
  let failedSubtests = 0;
  for (const m of res.text.matchAll(/Failed (\d+)\/\d+ subtests/g)) failedSubtests += Number(m[1]);
  // A file that died before printing a plan has no "Failed n/m" line.
  let failed = failedSubtests;
  if (res.code !== 0 && failed === 0) failed = 1;
  if (ran === 0 && failed === 0) failed = 1;
  return { passed: ran - failedSubtests, failed };
}

async function runDenoTests(env: Record<string, string>): Promise<Tally> {
  env = { ...env, NO_COLOR: "1" };
  const deno = Deno.execPath();
  const res = await streamed(deno, [
    "test",
    "--allow-all",
    "--no-check",
    ...paths,
  ], env);
  const m = /(?:ok|FAILED) \| (\d+) passed(?: \((\d+) steps?\))? \| (\d+) failed/.exec(res.text);
  if (!m) return { passed: 0, failed: 1 };
  const failed = Number(m[3]);
  return { passed: Number(m[1]), failed: res.code !== 0 && failed === 0 ? 1 : failed };
}

let tally: Tally = { passed: 0, failed: 0 };
let code = 0;
let stack: LocalStack | null = null;
let supabaseLike: SupabaseLikeDatabase | null = null;
const log = (l: string) => console.log(`[harness] ${l}`);
try {
  if (only !== "functions") {
    // Ctrl-C while pg_prove runs: stop it and the database, as the stack does below.
    const onSignal = () =>
      void stopCurrent().then(() => supabaseLike?.stop()).finally(() => Deno.exit(130));
    for (const signal of ["SIGINT", "SIGTERM"] as const) Deno.addSignalListener(signal, onSignal);
    try {
      supabaseLike = await startSupabaseLike(log);
      const t = await runPgTap(supabaseLike.url);
      tally = { passed: tally.passed + t.passed, failed: tally.failed + t.failed };
    } finally {
      for (const signal of ["SIGINT", "SIGTERM"] as const) {
        Deno.removeSignalListener(signal, onSignal);
      }
      await supabaseLike?.stop();
      supabaseLike = null;
    }
  }
  if (only !== "db") {
    stack = await startLocalStack({ log });
    stack.defer(stopCurrent);
    log(`postgres ${stack.postgres.url}  redis ${stack.redis.url}`);
    const t = await runDenoTests({
      AGENT_CHAT_TEST_DATABASE_URL: stack.postgres.url,
      AGENT_CHAT_TEST_REDIS_URL: stack.redis.url,
    });
    tally = { passed: tally.passed + t.passed, failed: tally.failed + t.failed };
  }
} catch (error) {
  console.error(error instanceof MissingToolError ? `error: ${error.message}` : error);
  tally.failed += 1;
} finally {
  await stopCurrent();
  await supabaseLike?.stop();
  await stack?.stop();
}
if (tally.failed > 0) code = 1;
console.log(`\n${tally.passed} passed, ${tally.failed} failed`);
Deno.exit(code);
