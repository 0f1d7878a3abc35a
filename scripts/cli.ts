/**
 * The conventions every command of this repository keeps (ops, token, dev,
 * bench, reliability): `--help` prints the usage and exits 0; an unknown
 * option or a bad value is one line naming the flag and exit 2; any other
 * failure is one line and exit 1, never a stack trace. Parsing is
 * node:util's parseArgs (strict), so options mean the same everywhere.
 */
import { parseArgs, type ParseArgsConfig } from "node:util";

/** A bad invocation: printed as `error: <message>` with exit code 2. */
export class UsageError extends Error {}

/** A failure the user can act on (a tool missing, the stack not running): exit 1, no trace. */
export class CliError extends Error {}

type Options = NonNullable<ParseArgsConfig["options"]>;

export interface CommandSpec<O extends Options> {
  /** The usage text `--help` prints (first line: `usage: …`). */
  usage: string;
  options: O;
  positionals?: boolean;
}

/** Parses `argv` strictly; `--help`/`-h` is added to every command. */
export function parseCommand<O extends Options>(spec: CommandSpec<O>, argv: string[]) {
  try {
    const parsed = parseArgs({
      args: argv[0] === "--" ? argv.slice(1) : argv,
      options: { ...spec.options, help: { type: "boolean", short: "h" } },
      allowPositionals: spec.positionals ?? false,
      strict: true,
    });
    return parsed as typeof parsed & { values: { help?: boolean } };
  } catch (error) {
    throw new UsageError(parseArgsMessage(error));
  }
}

/** parseArgs' multi-line messages, as one line that names the option. */
function parseArgsMessage(error: unknown): string {
  const e = error as { code?: string; message?: string };
  const option = /'([^']+)'/.exec(e.message ?? "")?.[1] ?? "";
  const name = option.startsWith("-") ? option.split(" ")[0] : option ? `--${option}` : "";
  switch (e.code) {
    case "ERR_PARSE_ARGS_UNKNOWN_OPTION":
      return `unknown option ${name}`;
    case "ERR_PARSE_ARGS_INVALID_OPTION_VALUE":
      return /does not take an argument/.test(e.message ?? "")
        ? `${name}: takes no value`
        : `${name}: needs a value`;
    case "ERR_PARSE_ARGS_UNEXPECTED_POSITIONAL":
      return `unexpected argument ${option || "(positional)"}`;
    default:
      return (e.message ?? String(error)).split("\n")[0]!;
  }
}

/**
 * Runs a command's main and exits with its code: 0, or what it returns;
 * UsageError → 2; CliError or anything else → 1. One line on stderr, no
 * stack trace (set AGENT_CHAT_DEBUG=1 to see one).
 */
export async function runCommand(main: () => Promise<number | void>): Promise<never> {
  let code: number;
  try {
    code = (await main()) ?? 0;
  } catch (error) {
    code = exitCodeOf(error);
    console.error(`error: ${messageOf(error)}${code === 2 ? " (--help for usage)" : ""}`);
    if (Deno.env.get("AGENT_CHAT_DEBUG") === "1") console.error(error);
  }
  Deno.exit(code);
}

export function exitCodeOf(error: unknown): number {
  return error instanceof UsageError ? 2 : 1;
}

export function messageOf(error: unknown): string {
  const e = error as { message?: string; code?: string };
  const message = (e?.message ?? String(error)).trim();
  // Database errors name their SQLSTATE; keep the first line of anything else.
  const first = message.split("\n")[0]!;
  return typeof e?.code === "string" && /^[0-9A-Z]{5}$/.test(e.code)
    ? `${first} (${e.code})`
    : first;
}

// ------------------------------------------------------------ flag values

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

export function uuidFlag(value: string, name: string): string {
  if (!UUID.test(value)) throw new UsageError(`${name}: not a UUID: ${value}`);
  return value;
}

/** An ISO 8601 timestamp (a date alone means midnight UTC). */
export function timestampFlag(value: string, name: string): Date {
  const date = /^\d{4}-\d{2}-\d{2}/.test(value) ? new Date(value) : new Date(NaN);
  if (Number.isNaN(date.getTime())) {
    throw new UsageError(`${name}: not an ISO timestamp: ${value} (e.g. 2026-12-31T18:00:00Z)`);
  }
  return date;
}

/** "90m", "24h", "7d" → milliseconds. */
export function durationFlag(value: string, name: string): number {
  const m = /^(\d+)\s*(m|h|d)$/.exec(value.trim());
  if (!m) throw new UsageError(`${name}: not a duration: ${value} (use 90m, 24h or 7d)`);
  return Number(m[1]) * { m: 60_000, h: 3_600_000, d: 86_400_000 }[m[2] as "m" | "h" | "d"];
}

export function numberFlag(
  value: string,
  name: string,
  range: { min?: number; max?: number; integer?: boolean } = {},
): number {
  const n = Number(value);
  const ok = value.trim() !== "" && Number.isFinite(n) && (!range.integer || Number.isInteger(n)) &&
    (range.min === undefined || n >= range.min) && (range.max === undefined || n <= range.max);
  if (!ok) {
    const kind = range.integer ? "an integer" : "a number";
    const bounds = range.min !== undefined && range.max !== undefined
      ? ` from ${range.min} to ${range.max}`
      : range.min !== undefined
      ? ` of at least ${range.min}`
      : range.max !== undefined
      ? ` of at most ${range.max}`
      : "";
    throw new UsageError(`${name}: not ${kind}${bounds}: ${value}`);
  }
  return n;
}

export function choiceFlag<T extends string>(
  value: string,
  name: string,
  choices: readonly T[],
): T {
  if (!(choices as readonly string[]).includes(value)) {
    throw new UsageError(`${name}: one of ${choices.join(", ")}, not ${value}`);
  }
  return value as T;
}

/**
 * For a script's top level: parses Deno.args and reads the values with
 * `read` (which may throw UsageError); `--help` prints the usage and exits
 * 0, a bad invocation prints one line and exits 2.
 */
export function commandLine<O extends Options, T>(
  spec: CommandSpec<O>,
  read: (parsed: ReturnType<typeof parseCommand<O>>) => T,
): T {
  try {
    const parsed = parseCommand(spec, Deno.args);
    if (parsed.values.help) {
      console.log(spec.usage);
      Deno.exit(0);
    }
    return read(parsed);
  } catch (error) {
    console.error(`error: ${messageOf(error)} (--help for usage)`);
    Deno.exit(2);
  }
}
