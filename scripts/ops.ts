/**
 * Operator CLI: `deno task ops <command> [args] [--json] [--db <url>]`.
 * The database is --db, else DATABASE_URL, AI_AGENT_DATABASE_URL or
 * SUPABASE_DB_URL, else the running local stack (`npm run dev`).
 * Exit codes: 0 done, 1 failed, 2 bad arguments (see scripts/cli.ts).
 */
import postgres from "postgres";
import { commands } from "./ops/commands.ts";
import type { Command } from "./ops/args.ts";
import { exitCodeOf, messageOf, parseCommand, UsageError } from "./cli.ts";
import { readState } from "./dev-state.ts";

/** What every command takes; each command adds its own flags (ops/commands.ts). */
const globalOptions = {
  json: { type: "boolean" },
  db: { type: "string" },
} as const;

const usage = [
  "usage: deno task ops <command> [args] [--json] [--db <postgres url>]",
  "",
  ...Object.values(commands).map((c) => `  ${c.usage}`),
  "",
  "  --json   machine-readable output (numbers as JSON numbers)",
  "  --db     the database (default: DATABASE_URL, AI_AGENT_DATABASE_URL, SUPABASE_DB_URL,",
  "           or the running `npm run dev` stack)",
  "",
  "Each command takes its own flags: npm run ops -- <command> --help",
].join("\n");

/** `ops <command> --help`: its usage, what it does, an example. */
function commandHelp(command: Command): string {
  return `usage: deno task ops ${command.usage}\n\n${command.help}`;
}

/** The command named first (after any --json or --db <url>); undefined with none. */
function commandName(argv: string[]): string | undefined {
  for (let i = argv[0] === "--" ? 1 : 0; i < argv.length; i++) {
    const arg = argv[i]!;
    if (arg === "--db") i++;
    else if (!arg.startsWith("-")) return arg;
  }
  return undefined;
}

/**
 * numeric and bigint columns come from Postgres as strings (they may not fit
 * a double); the figures operators read here do, so they are numbers.
 */
const numbers = {
  numeric: { to: 1700, from: [1700, 20], serialize: (n: unknown) => String(n), parse: Number },
};

export async function runOps(
  argv: string[],
  out: (s: string) => void,
  err: (s: string) => void,
): Promise<number> {
  let command: Command | undefined;
  let parsed;
  try {
    const name = commandName(argv);
    command = name === undefined ? undefined : commands[name];
    if (name !== undefined && !command) throw new UsageError(`unknown command "${name}"`);
    const options = { ...globalOptions, ...command?.flags };
    parsed = parseCommand({ usage, options, positionals: true }, argv);
    if (!command) {
      if (parsed.values.help) return out(usage), 0;
      throw new UsageError("a command is needed");
    }
    if (parsed.values.help) return out(commandHelp(command)), 0;
  } catch (error) {
    const help = command ? `ops ${commandName(argv)} --help` : "--help for usage";
    err(`error: ${messageOf(error)} (${help})`);
    return exitCodeOf(error);
  }
  const url = parsed.values.db ?? Deno.env.get("DATABASE_URL") ??
    Deno.env.get("AI_AGENT_DATABASE_URL") ??
    Deno.env.get("SUPABASE_DB_URL") ?? (await readState())?.databaseUrl;
  if (!url) {
    err(
      "error: --db: no database: pass --db <url>, set DATABASE_URL, or start the local stack with `npm run dev`",
    );
    return 2;
  }
  const sql = postgres(url, {
    max: 1,
    onnotice: () => {},
    connect_timeout: 10,
    prepare: false,
    types: numbers,
  });
  try {
    const { db: _db, json, help: _help, ...flags } = parsed.values;
    await command.run({
      sql,
      args: parsed.positionals.slice(1),
      flags: flags as Record<string, string | boolean>,
      json: json === true,
      out,
    });
    return 0;
  } catch (error) {
    const code = exitCodeOf(error);
    err(`error: ${messageOf(error)}${code === 2 ? ` (ops ${parsed.positionals[0]} --help)` : ""}`);
    return code;
  } finally {
    await sql.end({ timeout: 2 });
  }
}

if (import.meta.main) {
  Deno.exit(await runOps(Deno.args, (s) => console.log(s), (s) => console.error(s)));
}
