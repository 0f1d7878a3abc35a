/**
 * Operator CLI: `deno task ops -- <command> [args] [--json] [--db <url>]`.
 * The database is --db, else DATABASE_URL, AI_AGENT_DATABASE_URL or
 * SUPABASE_DB_URL, else the running local stack (`npm run dev`).
 * Exit codes: 0 done, 1 failed, 2 bad arguments.
 */
import { parseArgs } from "node:util";
import postgres from "postgres";
import { commands } from "./ops/commands.ts";
import { UsageError } from "./ops/format.ts";
import { readState } from "./dev-state.ts";

function help(): string {
  return [
    "usage: deno task ops -- <command> [args] [--json] [--db <postgres url>]",
    "",
    ...Object.values(commands).map((c) => `  ${c.usage}`),
  ].join("\n");
}

export async function runOps(
  argv: string[],
  out: (s: string) => void,
  err: (s: string) => void,
): Promise<number> {
  let parsed;
  try {
    parsed = parseArgs({
      args: argv.filter((a) => a !== "--"),
      allowPositionals: true,
      strict: true,
      options: {
        json: { type: "boolean" },
        db: { type: "string" },
        help: { type: "boolean", short: "h" },
        org: { type: "string" },
        user: { type: "string" },
        channel: { type: "string" },
        reason: { type: "string" },
        by: { type: "string" },
        expires: { type: "string" },
        all: { type: "boolean" },
        since: { type: "string" },
        from: { type: "string" },
        to: { type: "string" },
        bucket: { type: "string" },
        "by-org": { type: "boolean" },
        check: { type: "boolean" },
        "usage-retention": { type: "string" },
        html: { type: "string" },
      },
    });
  } catch (error) {
    err(`error: ${(error as Error).message}\n\n${help()}`);
    return 2;
  }
  const [name, ...args] = parsed.positionals;
  if (parsed.values.help || !name) {
    (name ? out : err)(help());
    return name ? 0 : 2;
  }
  const command = commands[name];
  if (!command) {
    err(`error: unknown command "${name}"\n\n${help()}`);
    return 2;
  }
  const url = parsed.values.db ?? Deno.env.get("DATABASE_URL") ??
    Deno.env.get("AI_AGENT_DATABASE_URL") ??
    Deno.env.get("SUPABASE_DB_URL") ?? (await readState())?.databaseUrl;
  if (!url) {
    err(
      "error: no database: pass --db <url>, set DATABASE_URL, or start the local stack with `npm run dev`",
    );
    return 2;
  }
  const sql = postgres(url, { max: 1, onnotice: () => {}, connect_timeout: 10, prepare: false });
  try {
    const { db: _db, json, ...flags } = parsed.values;
    await command.run({
      sql,
      args,
      flags: flags as Record<string, string | boolean>,
      json: json === true,
      out,
    });
    return 0;
  } catch (error) {
    if (error instanceof UsageError) {
      err(`error: ${error.message}\n  ${command.usage}`);
      return 2;
    }
    const e = error as { message?: string; code?: string };
    err(`error: ${e.message ?? String(error)}${e.code ? ` (${e.code})` : ""}`);
    return 1;
  } finally {
    await sql.end({ timeout: 2 });
  }
}

if (import.meta.main) {
  Deno.exit(await runOps(Deno.args, (s) => console.log(s), (s) => console.error(s)));
}
