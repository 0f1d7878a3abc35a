/**
 * `reconcile`: what was metered against what the upstream reported and the
 * provider billed, per UTC day and model (ops.usage_reconciliation), after
 * importing a provider usage export when one is given (`--import
 * export.csv`, into ops.provider_usage through ops.provider_usage_import).
 *
 * The CSV needs a header. Columns are found by the names OpenAI's usage and
 * cost exports use, or plain ones: day (`date`, `day`, `start_time` as an ISO
 * date or Unix seconds), `model`, requests (`num_model_requests`,
 * `requests`), input tokens (`input_tokens`, `prompt_tokens`), cached input
 * tokens (`input_cached_tokens`, `cached_tokens`), output tokens
 * (`output_tokens`, `completion_tokens`), USD (`cost`, `usd`, `amount`,
 * `amount_value`). Rows of one day and model are summed.
 */
import { UsageError } from "../cli.ts";
import { type Command, optionalTimestamp, print, text } from "./args.ts";

export interface ProviderRow {
  day: string;
  model: string;
  requests: number | null;
  input_tokens: number | null;
  cached_input_tokens: number | null;
  output_tokens: number | null;
  usd: number | null;
}

const COLUMNS: Record<keyof ProviderRow, string[]> = {
  day: ["date", "day", "start_time", "start_time_iso", "timestamp"],
  model: ["model", "model_name", "snapshot_id"],
  requests: ["num_model_requests", "requests", "n_requests"],
  input_tokens: ["input_tokens", "prompt_tokens", "n_context_tokens_total"],
  cached_input_tokens: ["input_cached_tokens", "cached_tokens", "cached_input_tokens"],
  output_tokens: ["output_tokens", "completion_tokens", "n_generated_tokens_total"],
  usd: ["cost", "usd", "cost_usd", "amount", "amount_value"],
};

/** One CSV line's fields (RFC 4180 quoting: "" is a quote inside a quoted field). */
function fields(line: string): string[] {
  const out: string[] = [];
  let field = "";
  let quoted = false;
  for (let i = 0; i < line.length; i++) {
    const c = line[i]!;
    if (quoted && c === '"' && line[i + 1] === '"') field += line[++i];
    else if (c === '"') quoted = !quoted;
    else if (c === "," && !quoted) {
      out.push(field);
      field = "";
    } else field += c;
  }
  out.push(field);
  return out.map((f) => f.trim());
}

function dayOf(raw: string, line: number): string {
  const date = /^\d+(\.\d+)?$/.test(raw) ? new Date(Number(raw) * 1000) : new Date(raw);
  if (!raw || Number.isNaN(date.getTime())) {
    throw new UsageError(`line ${line}: not a date: ${raw}`);
  }
  return date.toISOString().slice(0, 10);
}

function numberOf(raw: string | undefined, line: number, column: string): number | null {
  if (raw === undefined || raw === "") return null;
  const n = Number(raw);
  if (!Number.isFinite(n) || n < 0) throw new UsageError(`line ${line}: ${column}: not a number`);
  return n;
}

/** The rows of a provider usage export. */
export function parseProviderCsv(csv: string): ProviderRow[] {
  const lines = csv.split(/\r?\n/).filter((l) => l.trim() !== "");
  const header = fields(lines[0] ?? "").map((h) => h.toLowerCase());
  const index = {} as Record<keyof ProviderRow, number>;
  for (const [key, names] of Object.entries(COLUMNS) as Array<[keyof ProviderRow, string[]]>) {
    index[key] = header.findIndex((h) => names.includes(h));
  }
  for (const key of ["day", "model"] as const) {
    if (index[key] < 0) {
      throw new UsageError(`--import: no ${key} column (one of ${COLUMNS[key].join(", ")})`);
    }
  }
  return lines.slice(1).map((l, i) => {
    const f = fields(l);
    const n = (key: keyof ProviderRow) =>
      numberOf(index[key] < 0 ? undefined : f[index[key]], i + 2, key);
    return {
      day: dayOf(f[index.day] ?? "", i + 2),
      model: f[index.model] ?? "",
      requests: n("requests"),
      input_tokens: n("input_tokens"),
      cached_input_tokens: n("cached_input_tokens"),
      output_tokens: n("output_tokens"),
      usd: n("usd"),
    };
  });
}

const dayFlag = (value: unknown, name: string) =>
  optionalTimestamp(value, name)?.toISOString().slice(0, 10) ?? null;

export const reconcileCommand: Command = {
  usage: "reconcile [--from <date>] [--to <date>] [--import <export.csv>] [--source <name>]",
  flags: {
    from: { type: "string" },
    to: { type: "string" },
    import: { type: "string" },
    source: { type: "string" },
  },
  help: `Metered tokens and cost (reported by the upstream, or estimated) beside what the provider
billed, per UTC day and model (ops.usage_reconciliation); default: the last 7 days. --import
loads a provider usage or cost export (CSV with a header: start_time or date, model,
num_model_requests, input_tokens, input_cached_tokens, output_tokens, cost) into
ops.provider_usage first, as --source (default provider); a re-import replaces those days.

example:
  npm run ops -- reconcile --from 2026-03-01 --to 2026-03-31 --import usage-export.csv`,
  async run(ctx) {
    const to = dayFlag(ctx.flags.to, "--to") ?? new Date().toISOString().slice(0, 10);
    const from = dayFlag(ctx.flags.from, "--from") ??
      new Date(Date.parse(to) - 7 * 86400_000).toISOString().slice(0, 10);
    if (from > to) throw new UsageError("--from: must not be after --to");
    const file = text(ctx.flags.import);
    if (file !== null) {
      let csv: string;
      try {
        csv = await Deno.readTextFile(file);
      } catch {
        throw new UsageError(`--import: cannot read ${file}`);
      }
      const rows = parseProviderCsv(csv);
      const source = text(ctx.flags.source) ?? "provider";
      const [r] = await ctx.sql`select ops.provider_usage_import(${
        ctx.sql.json(rows as never)
      }, ${source}) as n`;
      if (!ctx.json) ctx.out(`imported ${r!.n} day-and-model rows from ${file}`);
    }
    const rows = await ctx.sql`select * from ops.usage_reconciliation(${from}::date, ${to}::date)`;
    print(ctx, rows);
  },
};
