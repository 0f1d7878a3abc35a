/**
 * What every operator command receives, and the argument checks they share:
 * each error names the flag or argument it is about.
 */
import type postgres from "postgres";
import { inertJson, table } from "./format.ts";
import { timestampFlag, UsageError, uuidFlag } from "../cli.ts";

export interface CommandContext {
  sql: postgres.Sql;
  args: string[];
  flags: Record<string, string | boolean>;
  json: boolean;
  out: (text: string) => void;
}

export function uuidArg(value: unknown, name: string): string {
  if (typeof value !== "string") throw new UsageError(`${name}: missing (a UUID)`);
  return uuidFlag(value, name);
}

export function optionalUuid(value: unknown, name: string): string | null {
  return value === undefined ? null : uuidArg(value, name);
}

export function optionalTimestamp(value: unknown, name: string): Date | null {
  return typeof value === "string" ? timestampFlag(value, name) : null;
}

/** A Postgres interval an operator would type: "15 minutes", "1 hour", "1 day". */
export function intervalFlag(value: string, name: string): string {
  if (!/^\d+\s*(minutes?|mins?|hours?|days?|weeks?)$/i.test(value.trim())) {
    throw new UsageError(`${name}: not an interval: ${value} (use 15 minutes, 1 hour or 1 day)`);
  }
  return value;
}

export function bucketKey(value: unknown): string {
  if (typeof value !== "string" || !/^(org|user|ip|channel):.+$/.test(value)) {
    throw new UsageError(
      "a bucket key looks like org:<uuid>, user:<uuid>, ip:<address> or channel:<name> (org:* lists)",
    );
  }
  return value;
}

export function print(
  ctx: CommandContext,
  rows: Array<Record<string, unknown>>,
  columns?: string[],
) {
  ctx.out(ctx.json ? inertJson(rows) : table(rows, columns));
}

/** A flag of one command, as node:util's parseArgs takes it. */
export type Flag = { type: "string" } | { type: "boolean" };

export interface Command {
  /** One line for `ops --help`: the command, its arguments and flags. */
  usage: string;
  /** This command's own flags (besides --json, --db and --help); any other is refused. */
  flags: Record<string, Flag>;
  /** What `ops <command> --help` prints below the usage: what it does, and an example. */
  help: string;
  run(ctx: CommandContext): Promise<void>;
}

/** A string flag's value, or null when it was not given. */
export function text(value: unknown): string | null {
  return typeof value === "string" ? value : null;
}

/** Who acted, for an audited change: --by, required (never guessed from the OS user). */
export function requiredBy(ctx: CommandContext, action: string): string {
  const by = text(ctx.flags.by)?.trim();
  if (!by) throw new UsageError(`--by: required (${action} is audited: who is acting?)`);
  return by;
}
