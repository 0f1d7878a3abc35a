/**
 * `ops alerts`: the open alerts with their ack and mute state and each
 * destination's delivery state, and the levers on them: ack, mute, unmute
 * (audited, so --by is required), and a test notification. Each is one SQL
 * function or view (ops.open_alerts, ops.alert_delivery_status, ops.alert_ack,
 * ops.alert_mute, ops.alert_unmute, ops.alert_test).
 */
import { numberFlag, UsageError } from "../cli.ts";
import {
  type Command,
  type CommandContext,
  optionalTimestamp,
  print,
  requiredBy,
  text,
} from "./args.ts";
import { inertJson } from "./format.ts";

const DESTINATIONS = ["slack", "pagerduty", "webhook"];

async function openAlerts(ctx: CommandContext) {
  if (ctx.flags.check === true) {
    const [r] = await ctx.sql`select ops.check_alerts() as result`;
    if (!ctx.json) ctx.out(`check: ${JSON.stringify(r!.result)}`);
  }
  const rows = await ctx.sql`select * from ops.open_alerts`;
  const destinations = await ctx.sql`select * from ops.alert_delivery_status`;
  if (ctx.json) return ctx.out(inertJson({ alerts: rows, destinations }));
  print(ctx, rows, [
    "id",
    "kind",
    "subject",
    "observed",
    "threshold",
    "raised_at",
    "acknowledged_by",
    "muted_until",
    "delivery",
  ]);
  ctx.out("");
  print(ctx, destinations, [
    "destination",
    "reported_at",
    "pending",
    "delivered_24h",
    "failed",
    "last_error",
  ]);
  if (destinations.every((d) => d.reported_at === null)) {
    ctx.out(
      "\nNo destination: alerts are only recorded. Set AI_AGENT_ALERT_* secrets of agent-alerts (docs/operations.md, Alerts).",
    );
  }
}

async function testNotification(ctx: CommandContext) {
  const destination = text(ctx.flags.destination);
  if (destination !== null && !DESTINATIONS.includes(destination)) {
    throw new UsageError(`--destination: ${DESTINATIONS.join(", ")} (got ${destination})`);
  }
  const rows = await ctx.sql`select id, destination, message_id, dedup_key, status
    from ops.alert_test(${destination})`;
  print(ctx, rows);
  if (!ctx.json) ctx.out("\nqueued: the next agent-alerts cycle sends it (within a minute).");
}

export const alertCommand: Command = {
  usage: "alerts [--check] | alerts test [--destination slack|pagerduty|webhook] | " +
    "alerts ack <id> --by <who> | alerts mute <kind> <subject> --until <iso> [--reason <text>] " +
    "--by <who> | alerts unmute <kind> <subject> --by <who>",
  flags: {
    check: { type: "boolean" },
    destination: { type: "string" },
    until: { type: "string" },
    reason: { type: "string" },
    by: { type: "string" },
  },
  help: `The open alerts with who acknowledged them, until when they are muted and each
destination's delivery state (ops.open_alerts), then each destination's state
(ops.alert_delivery_status). --check evaluates the conditions first.
  test        queue a test notification (ops.alert_test) for every destination the
              agent-alerts function has, or one: --destination slack|pagerduty|webhook
  ack <id>    someone is on it (audited: --by required)
  mute <kind> <subject> --until <iso> [--reason]   raise and send nothing until then
              kinds: success_rate, budget, budget_warning, latency_p95, delivery_failed
              subjects: global, org:<uuid>, destination:<slack|pagerduty|webhook>
  unmute <kind> <subject>

example:
  npm run ops -- alerts --check
  npm run ops -- alerts test --destination slack
  npm run ops -- alerts ack 42 --by oncall@example.com
  npm run ops -- alerts mute budget org:00000000-0000-4000-8000-0000000000a1 --until 2027-01-01 --reason "raised next month" --by oncall@example.com`,
  async run(ctx) {
    const [action, a, b] = ctx.args;
    if (action === undefined) return await openAlerts(ctx);
    if (action === "test") return await testNotification(ctx);
    if (action === "ack") {
      const id = numberFlag(a ?? "", "alert id", { min: 1, integer: true });
      return print(
        ctx,
        await ctx.sql`select * from ops.alert_ack(${id}, ${requiredBy(ctx, "alerts ack")})`,
      );
    }
    if (action !== "mute" && action !== "unmute") {
      throw new UsageError("alerts takes test, ack, mute or unmute (or nothing: the open alerts)");
    }
    if (!a || !b) throw new UsageError(`alerts ${action}: needs <kind> <subject>`);
    if (action === "unmute") {
      const [row] = await ctx.sql`select ops.alert_unmute(${a}, ${b}, ${
        requiredBy(ctx, `alerts ${action}`)
      }) as u`;
      return print(ctx, [{ kind: a, subject: b, unmuted: row!.u === true }]);
    }
    const until = optionalTimestamp(ctx.flags.until, "--until");
    if (!until) throw new UsageError("--until: missing (alerts mute … --until <iso>)");
    const by = requiredBy(ctx, `alerts ${action}`);
    print(
      ctx,
      await ctx.sql`select * from ops.alert_mute(${a}, ${b}, ${until}, ${
        text(ctx.flags.reason)
      }, ${by})`,
    );
  },
};
