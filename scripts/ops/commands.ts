/**
 * The operator commands. Each one calls the SQL functions operators can also
 * run in Supabase Studio (ops.*), never the tables behind them.
 */
import { inertJson, table } from "./format.ts";
import { renderReport } from "./report-html.ts";
import { CliError, durationFlag, UsageError } from "../cli.ts";
import {
  bucketKey,
  type Command,
  type CommandContext,
  intervalFlag,
  optionalTimestamp,
  optionalUuid,
  print,
  requiredBy,
  uuidArg,
} from "./args.ts";
import { policyCommands } from "./policy-commands.ts";
import { alertCommand } from "./alert-commands.ts";
import { memberCommands } from "./member-commands.ts";
import { reconcileCommand } from "./reconcile.ts";

function period(ctx: CommandContext): { from: Date; to: Date } {
  const to = optionalTimestamp(ctx.flags.to, "--to") ?? new Date();
  const from = optionalTimestamp(ctx.flags.from, "--from") ?? new Date(
    to.getTime() -
      durationFlag(typeof ctx.flags.since === "string" ? ctx.flags.since : "24h", "--since"),
  );
  if (from >= to) throw new UsageError("--from: must be before --to");
  return { from, to };
}

export const commands: Record<string, Command> = {
  breakers: {
    usage:
      "breakers                 circuit breakers per upstream (from every isolate's usage rows, last 24h)",
    flags: {},
    help: `Circuit breakers per upstream (model@host), as the usage rows of every isolate saw them
(ops.upstream_breakers): when each last opened and closed, attempts skipped, failed and answered in
the last 5 minutes, and the likely state ("open (in some isolates)" = requests skipped it).

example:
  npm run ops -- breakers
  npm run ops -- breakers --json`,
    async run(ctx) {
      print(ctx, await ctx.sql`select * from ops.upstream_breakers`);
    },
  },
  models: {
    usage:
      "models [--since 7d]      answers per model and day, and the share answered by fallbacks",
    flags: {
      since: { type: "string" },
      from: { type: "string" },
      to: { type: "string" },
    },
    help: `Answers per UTC day and model (the model that answered), how many a fallback answered,
and the day's fallback share (ops.model_answer_report). A rising share: the primary is failing.
  --since <duration>  the period before --to (default 24h); or --from <iso> --to <iso>

example:
  npm run ops -- models --since 7d`,
    async run(ctx) {
      const { from, to } = period(ctx);
      print(ctx, await ctx.sql`select * from ops.model_answer_report(${from}, ${to})`);
    },
  },
  buckets: {
    usage:
      "buckets <key>            show a rate-limit bucket (user:<uuid>, org:<uuid>, ip:<addr>, or a prefix like org:*)",
    flags: {},
    help: `What a bucket holds now: count, limit, remaining, reset (ops.bucket_status).

example:
  npm run ops -- buckets user:00000000-0000-4000-9000-0000000000b2
  npm run ops -- buckets 'org:*' --json`,
    async run(ctx) {
      const key = bucketKey(ctx.args[0]);
      const rows = await ctx.sql`select * from ops.bucket_status(${key})`;
      print(ctx, rows);
    },
  },
  "clear-bucket": {
    usage: "clear-bucket <key>       empty a bucket so its owner is let through now",
    flags: {},
    help: `Empties one bucket (ops.clear_rate_limit): its owner is let through at once.

example:
  npm run ops -- clear-bucket user:00000000-0000-4000-9000-0000000000b2`,
    async run(ctx) {
      const key = bucketKey(ctx.args[0]);
      if (key.endsWith("*")) throw new UsageError("clear-bucket takes one key, not a prefix");
      const [row] = await ctx.sql`select ops.clear_rate_limit(${key}) as cleared`;
      print(ctx, [{ bucket_key: key, cleared: row!.cleared === 1 }]);
    },
  },
  "opt-out": {
    usage:
      "opt-out add --org <uuid> [--user <uuid>] [--channel <c>] [--reason <text>] --by <who> [--expires <iso>]\n" +
      "  opt-out expire <id> --by <who>\n  opt-out list [--org <uuid>] [--all]",
    flags: {
      org: { type: "string" },
      user: { type: "string" },
      channel: { type: "string" },
      reason: { type: "string" },
      by: { type: "string" },
      expires: { type: "string" },
      all: { type: "boolean" },
    },
    help: `Adds, expires (never deletes) and lists opt-outs (ops.add_opt_out, ops.expire_opt_out,
ops.list_opt_outs). Without --user the whole org is opted out; without --channel every channel.
  --expires <iso>  when an added opt-out ends (default: never)
  --all            list expired opt-outs too

example:
  npm run ops -- opt-out add --org 00000000-0000-4000-8000-0000000000a1 --channel whatsapp --reason "asked to stop" --by you@example.com
  npm run ops -- opt-out list --org 00000000-0000-4000-8000-0000000000a1`,
    async run(ctx) {
      const [action, id] = ctx.args;
      const f = ctx.flags;
      const str = (v: unknown) => (typeof v === "string" ? v : null);
      if (action === "add") {
        const org = uuidArg(f.org, "--org");
        const user = optionalUuid(f.user, "--user");
        const expires = optionalTimestamp(f.expires, "--expires");
        const by = requiredBy(ctx, "opt-out add");
        const rows = await ctx.sql`select * from ops.add_opt_out(${org}::uuid, ${user}::uuid,
          ${str(f.channel)}, ${str(f.reason)}, ${by}, ${expires})`;
        print(ctx, rows);
      } else if (action === "expire") {
        const optOut = uuidArg(id, "opt-out id");
        const by = requiredBy(ctx, "opt-out expire");
        const rows = await ctx.sql`select * from ops.expire_opt_out(${optOut}::uuid, ${by})`;
        print(ctx, rows);
      } else if (action === "list") {
        const rows = await ctx.sql`select * from ops.list_opt_outs(${
          optionalUuid(f.org, "--org")
        }::uuid, ${f.all === true})`;
        print(ctx, rows, [
          "id",
          "org_id",
          "user_id",
          "channel",
          "reason",
          "created_by",
          "created_at",
          "expires_at",
          "active",
        ]);
      } else {
        throw new UsageError("opt-out needs add, expire or list");
      }
    },
  },
  session: {
    usage: "session show <id>        a stored session (Supabase store) with its messages",
    flags: {},
    help:
      `A session of the Supabase store with its messages (ops.session_show); Redis sessions are not in
the database.

example:
  npm run ops -- session show 3f2b6c1e-4d5a-4e8f-9a7b-1c2d3e4f5a6b`,
    async run(ctx) {
      if (ctx.args[0] !== "show") throw new UsageError("usage: session show <session uuid>");
      const [row] = await ctx.sql`select ops.session_show(${
        uuidArg(ctx.args[1], "session id")
      }::uuid) as s`;
      if (!row?.s) {
        throw new CliError("no such session (sessions in Redis are not in the database)");
      }
      if (ctx.json) return ctx.out(inertJson(row.s));
      const { messages, ...meta } = row.s as { messages: Array<Record<string, unknown>> };
      ctx.out(table([meta]));
      ctx.out("");
      ctx.out(table(messages, ["created_at", "role", "content"]));
    },
  },
  usage: {
    usage:
      "usage [--since 24h | --from <iso> --to <iso>] [--org <uuid>] [--bucket 1 hour] [--by-org]",
    flags: {
      since: { type: "string" },
      from: { type: "string" },
      to: { type: "string" },
      org: { type: "string" },
      bucket: { type: "string" },
      "by-org": { type: "boolean" },
    },
    help:
      `Requests, success rate, latency percentiles, tokens and cost (ops.usage_report): one row for the
period, or one per --bucket (15 minutes, 1 hour, 1 day), per org with --by-org.

example:
  npm run ops -- usage --since 24h --bucket "1 hour" --org 00000000-0000-4000-8000-0000000000a1`,
    async run(ctx) {
      const { from, to } = period(ctx);
      // No --bucket: one row for the whole period (a null bucket).
      const bucket = typeof ctx.flags.bucket === "string"
        ? intervalFlag(ctx.flags.bucket, "--bucket")
        : null;
      const rows = await ctx
        .sql`select * from ops.usage_report(${from}, ${to}, ${bucket}::interval,
        ${optionalUuid(ctx.flags.org, "--org")}::uuid, ${ctx.flags["by-org"] === true})`;
      print(ctx, rows, [
        "bucket_start",
        ...(ctx.flags["by-org"] === true ? ["org_id"] : []),
        "requests",
        "success_rate",
        "latency_p50_ms",
        "latency_p95_ms",
        "latency_p99_ms",
        "total_tokens",
        "estimated_usd",
        "refused",
      ]);
    },
  },
  alerts: alertCommand,
  reconcile: reconcileCommand,
  ...policyCommands,
  ...memberCommands,
  purge: {
    usage:
      "purge [--usage-retention 90d]   apply the retention periods (ops.retention_settings) until done",
    flags: { "usage-retention": { type: "string" } },
    help: `Applies the retention periods (ops.retention_settings) in bounded rounds until nothing is
left; --usage-retention overrides the usage-row period for this run.

example:
  npm run ops -- purge --usage-retention 400d`,
    async run(ctx) {
      const retention = typeof ctx.flags["usage-retention"] === "string"
        ? `${durationFlag(ctx.flags["usage-retention"], "--usage-retention") / 1000} seconds`
        : null;
      // One bounded round per call, each its own transaction, until nothing is left.
      const totals: Record<string, number> = { rounds: 0 };
      for (let more = true; more && totals.rounds! < 1000; totals.rounds!++) {
        const [row] = await ctx
          .sql`select ops.purge_expired(now(), ${retention}::interval) as result`;
        const result = row!.result as Record<string, number | boolean>;
        more = result.more === true;
        for (const [key, n] of Object.entries(result)) {
          if (typeof n === "number") totals[key] = (totals[key] ?? 0) + n;
        }
      }
      print(ctx, [totals]);
    },
  },
  report: {
    usage:
      "report --html <file> [--since 7d | --from <iso> --to <iso>] [--org <uuid>]   a self-contained HTML page of charts",
    flags: {
      html: { type: "string" },
      since: { type: "string" },
      from: { type: "string" },
      to: { type: "string" },
      org: { type: "string" },
    },
    help:
      `Writes one self-contained HTML page (no network): charts of requests, success rate (with the
alert's 98% line), latency, tokens and cost over every bucket of the period (empty ones as zero),
requests and success rate of the busiest orgs, spend against each budget, errors by code, the
per-org and tenant tables, the open alerts with their delivery state.

example:
  npm run ops -- report --html report.html --since 7d`,
    async run(ctx) {
      const file = ctx.flags.html;
      if (typeof file !== "string") {
        throw new UsageError("--html: missing (report --html <file>)");
      }
      const { from, to } = period({ ...ctx, flags: { since: "7d", ...ctx.flags } });
      const span = to.getTime() - from.getTime();
      const bucket = span <= 2 * 86_400_000
        ? "15 minutes"
        : span <= 14 * 86_400_000
        ? "1 hour"
        : "1 day";
      const org = optionalUuid(ctx.flags.org, "--org");
      const series = await ctx
        .sql`select * from ops.usage_report(${from}, ${to}, ${bucket}::interval, ${org}::uuid, false)`;
      const byOrg = await ctx
        .sql`select * from ops.usage_report(${from}, ${to}, null, ${org}::uuid, true)`;
      const alerts = await ctx.sql`select * from ops.open_alerts`;
      const orgSeries = await ctx
        .sql`select * from ops.usage_report(${from}, ${to}, ${bucket}::interval, ${org}::uuid, true)`;
      const budgets = await ctx.sql`select * from ops.budget_status()
        where ${org}::uuid is null or org_id is null or org_id = ${org}::uuid`;
      const errors = await ctx.sql`select * from ops.errors_by_code(${from}, ${to}, ${org}::uuid)`;
      const [settings] = await ctx.sql`select success_threshold from ops.alert_settings`;
      const tenants = await ctx.sql`select * from ops.org_dashboard
        where ${org}::uuid is null or org_id = ${org}::uuid
        order by budget_used_ratio desc nulls last, org_id`;
      const html = renderReport({
        tenants,
        from,
        to,
        bucket,
        org,
        series,
        byOrg,
        alerts,
        orgSeries,
        budgets,
        errors,
        successThreshold: Number(settings?.success_threshold ?? 0.98),
        generatedAt: new Date(),
      });
      await Deno.writeTextFile(file, html);
      ctx.out(
        ctx.json
          ? JSON.stringify({ file, points: series.length })
          : `wrote ${file} (${series.length} points)`,
      );
    },
  },
};
