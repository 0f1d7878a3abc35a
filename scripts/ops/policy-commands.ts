/**
 * The operator levers: tenant and channel policies, the kill switch and
 * budgets (alerts: alert-commands.ts). Each command is a thin wrapper over
 * one audited SQL function (ops.policy_set, ops.switch_off, ops.budget_set); `--by` names who acted (required: the
 * OS user), and every change is in ops.policy_audit.
 */
import { numberFlag, UsageError } from "../cli.ts";
import { reserveTokens } from "../../supabase/functions/agent-chat/admission.ts";
import { DEFAULT_SYSTEM_PROMPT } from "../../supabase/functions/agent-chat/config.ts";
import { table } from "./format.ts";
import {
  type Command,
  type CommandContext,
  optionalUuid,
  print,
  requiredBy,
  text,
} from "./args.ts";

const TEXT_FIELDS = new Set(["disabled_message", "note", "model", "model_fallbacks"]);

/** `field=value` pairs as the JSON object ops.policy_set takes (`null` clears a field). */
export function policySettings(pairs: string[]): Record<string, unknown> {
  if (pairs.length === 0) {
    throw new UsageError("policy set needs field=value pairs, e.g. org_max_requests=600");
  }
  const settings: Record<string, unknown> = {};
  for (const pair of pairs) {
    const eq = pair.indexOf("=");
    if (eq < 1) throw new UsageError(`${pair}: expected field=value`);
    const field = pair.slice(0, eq);
    const raw = pair.slice(eq + 1);
    if (raw === "null") settings[field] = null;
    else if (TEXT_FIELDS.has(field)) settings[field] = raw;
    else if (field === "enabled") {
      if (raw !== "true" && raw !== "false") throw new UsageError(`${field}: true, false or null`);
      settings[field] = raw === "true";
    } else settings[field] = numberFlag(raw, field, { min: 1, integer: true });
  }
  return settings;
}

/**
 * The least a turn reserves (admission.ts reserveTokens): the system prompt
 * and a one-byte message at one token a byte, once per billable model call,
 * plus the max output tokens, as the function's environment sets them (the
 * CLI reads the same variables; defaults otherwise).
 */
export function smallestTurnTokens(env: (name: string) => string | undefined): number {
  const prompt = env("AI_AGENT_SYSTEM_PROMPT") || DEFAULT_SYSTEM_PROMPT;
  const maxOutput = Number(env("AI_AGENT_MAX_OUTPUT_TOKENS") || 800);
  const attempts = Number(env("AI_AGENT_OPENAI_MAX_RETRIES") || 1) + 1;
  return reserveTokens([{ content: prompt }, { content: "x" }], maxOutput, attempts);
}

/** A token quota no turn can ever fit would refuse forever: refused here with the floor. */
export function checkTokenQuotas(settings: Record<string, unknown>, smallest: number): void {
  for (const [field, value] of Object.entries(settings)) {
    if (/_tokens_per_(minute|day)$/.test(field) && typeof value === "number" && value < smallest) {
      throw new UsageError(
        `${field}=${value}: no turn could ever fit; the smallest turn reserves ${smallest} tokens ` +
          "(system prompt and max output tokens at one token a byte, per billable model call)",
      );
    }
  }
}

function scope(ctx: CommandContext) {
  return {
    org: optionalUuid(ctx.flags.org, "--org"),
    channel: text(ctx.flags.channel),
  };
}

function showJson(ctx: CommandContext, value: unknown) {
  ctx.out(JSON.stringify(value, null, 2));
}

async function showPolicy(ctx: CommandContext) {
  const { org, channel } = scope(ctx);
  const [row] = await ctx.sql`select ops.policy_show(${org}::uuid, ${channel}) as p`;
  const policy = row!.p as { effective: Record<string, { value: unknown; from: string }> };
  if (ctx.json) return showJson(ctx, policy);
  const { effective, ...rest } = policy;
  ctx.out(table(Object.entries(effective).map(([field, v]) => ({ field, ...v }))));
  ctx.out("");
  ctx.out(JSON.stringify(rest, null, 2));
}

const policy: Command = {
  usage: "policy show|set|clear|audit [--org <uuid>] [--channel <c>] [field=value …] --by <who>",
  flags: { org: { type: "string" }, channel: { type: "string" }, by: { type: "string" } },
  help: `A tenant's or a channel's policy (ops.policy_show, ops.policy_set, ops.policy_clear,
ops.policy_audit): no --org and no --channel is the global row. \`null\` clears a field.

example:
  npm run ops -- policy set --org 00000000-0000-4000-8000-0000000000a1 org_max_requests=600 user_tokens_per_day=200000 --by ops@example.com
  npm run ops -- policy show --org 00000000-0000-4000-8000-0000000000a1`,
  async run(ctx) {
    const { org, channel } = scope(ctx);
    const [action, ...pairs] = ctx.args;
    if (action === "show") return await showPolicy(ctx);
    if (action === "set") {
      const settings = policySettings(pairs);
      checkTokenQuotas(settings, smallestTurnTokens((name) => Deno.env.get(name)));
      const by = requiredBy(ctx, "policy set");
      const rows = await ctx.sql`select * from ops.policy_set(${org}::uuid, ${channel},
        ${ctx.sql.json(settings as never)}, ${by})`;
      return print(ctx, rows);
    }
    if (action === "clear") {
      const by = requiredBy(ctx, "policy clear");
      const [row] = await ctx.sql`select ops.policy_clear(${org}::uuid, ${channel}, ${by}) as c`;
      return print(ctx, [{ org_id: org, channel, cleared: row!.c === true }]);
    }
    if (action === "audit") {
      const rows = await ctx.sql`select * from ops.policy_audit
        where ${org}::uuid is null or org_id = ${org}::uuid order by id desc limit 50`;
      return print(ctx, rows);
    }
    throw new UsageError("policy needs show, set, clear or audit");
  },
};

const kill: Command = {
  usage: "switch off|on [--org <uuid>] [--channel <c>] [--message <text>] --by <who>",
  flags: {
    org: { type: "string" },
    channel: { type: "string" },
    message: { type: "string" },
    by: { type: "string" },
  },
  help:
    `The kill switch (ops.switch_off, ops.switch_on): for everyone, one tenant (--org) or one channel
(--channel); --message is what users are told (503 assistant_disabled).

example:
  npm run ops -- switch off --message "Back at noon; your officers can help meanwhile." --by oncall@example.com`,
  async run(ctx) {
    const { org, channel } = scope(ctx);
    const message = text(ctx.flags.message);
    if (ctx.args[0] === "off") {
      const by = requiredBy(ctx, "switch off");
      const rows = await ctx.sql`select * from ops.switch_off(${org}::uuid, ${message}, ${by},
        ${channel})`;
      return print(ctx, rows);
    }
    if (ctx.args[0] === "on") {
      if (message !== null) throw new UsageError("--message: only with switch off");
      const by = requiredBy(ctx, "switch on");
      const rows = await ctx.sql`select * from ops.switch_on(${org}::uuid, ${by}, ${channel})`;
      return print(ctx, rows);
    }
    throw new UsageError("switch needs off or on");
  },
};

const budget: Command = {
  usage:
    "budget set <usd> [--org <uuid>] [--mode alert|enforce] [--note <text>] --by <who> | budget clear [--org <uuid>] --by <who>",
  flags: {
    org: { type: "string" },
    mode: { type: "string" },
    note: { type: "string" },
    by: { type: "string" },
  },
  help:
    `A monthly budget in USD for one tenant (--org) or everyone (ops.budget_set, ops.budget_clear):
--mode alert raises an alert, enforce also refuses new turns (402).

example:
  npm run ops -- budget set 50 --org 00000000-0000-4000-8000-0000000000a1 --mode enforce --note "pilot" --by ops@example.com`,
  async run(ctx) {
    const { org } = scope(ctx);
    if (ctx.args[0] === "clear") {
      const by = requiredBy(ctx, "budget clear");
      const [row] = await ctx.sql`select ops.budget_clear(${org}::uuid, ${by}) as c`;
      return print(ctx, [{ org_id: org, cleared: row!.c === true }]);
    }
    if (ctx.args[0] !== "set") throw new UsageError("budget needs set or clear");
    if (ctx.args[1] === undefined) throw new UsageError("budget set: missing the monthly USD");
    const usd = numberFlag(ctx.args[1], "monthly USD", { min: 0 });
    const mode = text(ctx.flags.mode) ?? "alert";
    if (mode !== "alert" && mode !== "enforce") throw new UsageError("--mode: alert or enforce");
    const by = requiredBy(ctx, "budget set");
    const rows = await ctx.sql`select * from ops.budget_set(${org}::uuid, ${usd}, ${mode}, ${by},
      ${text(ctx.flags.note)})`;
    print(ctx, rows);
  },
};

export const policyCommands: Record<string, Command> = { policy, switch: kill, budget };
