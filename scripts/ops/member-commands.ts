/**
 * Members' data: `forget` (erasure in Postgres, then the member's Redis
 * sessions), `forget --pending` (the Redis erasures still queued, e.g. after
 * an auth user was deleted; run it on a schedule), `export` (one JSON
 * document for a subject-access request) and `retention` (show or set the
 * retention periods, audited). The SQL parts are ops.forget_user,
 * ops.export_user, ops.redis_erasure_done and ops.retention_set.
 */
import { CliError, numberFlag, UsageError } from "../cli.ts";
import { readState } from "../dev-state.ts";
import { type Command, type CommandContext, print, text, uuidArg } from "./args.ts";
import { inertJson } from "./format.ts";
import {
  connectMemberRedis,
  exportMemberSessions,
  forgetMemberSessions,
  type MemberRedis,
} from "./member-redis.ts";

async function redisOf(ctx: CommandContext): Promise<MemberRedis | undefined> {
  if (ctx.flags["no-redis"] === true) return undefined;
  const url = text(ctx.flags.redis) ?? Deno.env.get("AI_AGENT_REDIS_URL") ??
    Deno.env.get("UPSTASH_REDIS_REST_URL") ?? (await readState())?.redisUrl;
  return connectMemberRedis(url ?? undefined, Deno.env.toObject());
}

function who(ctx: CommandContext): string {
  const by = text(ctx.flags.by);
  if (!by?.trim()) throw new UsageError("--by: missing (who asked: a ticket, an operator)");
  return by;
}

/** Erases the member's Redis sessions and records it; a failure stays queued. */
async function eraseRedis(
  ctx: CommandContext,
  redis: MemberRedis | undefined,
  erasure: { erasure_id: number; user_id: string },
  by: string,
): Promise<number | null> {
  if (!redis) {
    if (ctx.flags["no-redis"] !== true) {
      throw new CliError(
        `erasure ${erasure.erasure_id}: the Redis part is still queued: set AI_AGENT_REDIS_URL or pass --redis, ` +
          "or --no-redis if this deployment never used the Redis store",
      );
    }
    await ctx.sql`select ops.redis_erasure_done(${erasure.erasure_id}, null, ${by})`;
    return null;
  }
  try {
    const deleted = await forgetMemberSessions(redis, erasure.user_id);
    await ctx.sql`select ops.redis_erasure_done(${erasure.erasure_id}, ${deleted}, ${by})`;
    return deleted;
  } catch (error) {
    const message = error instanceof Error ? error.message : String(error);
    await ctx
      .sql`select ops.redis_erasure_done(${erasure.erasure_id}, null, ${by}, ${message})`;
    throw new CliError(
      `erasure ${erasure.erasure_id}: Postgres done, Redis failed (${message}); retry with: forget --pending`,
    );
  }
}

async function forgetPending(ctx: CommandContext, redis: MemberRedis | undefined) {
  const by = text(ctx.flags.by) ?? Deno.env.get("USER") ?? "ops forget --pending";
  const pending = await ctx.sql<Array<{ erasure_id: number; user_id: string }>>`
    select erasure_id, user_id from ops.redis_erasures_pending(1000)`;
  const done = [];
  for (const erasure of pending) {
    done.push({ ...erasure, redis_sessions_deleted: await eraseRedis(ctx, redis, erasure, by) });
  }
  print(ctx, done, ["erasure_id", "user_id", "redis_sessions_deleted"]);
}

const forget: Command = {
  usage: "forget --user <uuid> --by <who> [--redis <url> | --no-redis]   erase a member " +
    "(Postgres and Redis)\n  forget --pending [--by <who>]   finish the queued Redis erasures",
  flags: {
    user: { type: "string" },
    by: { type: "string" },
    redis: { type: "string" },
    "no-redis": { type: "boolean" },
    pending: { type: "boolean" },
  },
  help: `Erases one member everywhere (ops.forget_user: sessions, stored answers, the personal
fields of usage rows, which keep their tokens and cost under a pseudonym), then the member's
Redis sessions (AI_AGENT_REDIS_URL, or --redis). Opt-outs stay. --pending finishes the Redis
erasures queued when an auth user was deleted.

example:
  npm run ops -- forget --user 22222222-2222-4222-8222-222222222222 --by alice@ops`,
  async run(ctx) {
    const redis = await redisOf(ctx);
    try {
      if (ctx.flags.pending === true) return await forgetPending(ctx, redis);
      const user = uuidArg(ctx.flags.user, "--user").toLowerCase();
      const by = who(ctx);
      const [row] = await ctx.sql`select ops.forget_user(${user}::uuid, ${by}) as r`;
      const result = row!.r as Record<string, unknown> & { erasure_id: number; user_id: string };
      const deleted = await eraseRedis(ctx, redis, result, by);
      print(ctx, [{ ...result, redis: deleted === null ? "no_redis" : "done" }]);
      if (!ctx.json) ctx.out(`redis sessions deleted: ${deleted ?? "none (no Redis store)"}`);
    } finally {
      await redis?.close();
    }
  },
};

const exportUser: Command = {
  usage: "export --user <uuid> [--redis <url> | --no-redis]   everything kept about a member, " +
    "as one JSON document",
  flags: { user: { type: "string" }, redis: { type: "string" }, "no-redis": { type: "boolean" } },
  help: `Prints one JSON document for a subject-access request: the member's sessions and
messages (Postgres and Redis), opt-outs and usage rows (ops.export_user for the Postgres part).

example:
  npm run ops -- export --user 22222222-2222-4222-8222-222222222222 > member.json`,
  async run(ctx) {
    const user = uuidArg(ctx.flags.user, "--user").toLowerCase();
    const redis = await redisOf(ctx);
    try {
      const [row] = await ctx.sql`select ops.export_user(${user}::uuid) as doc`;
      const doc = row!.doc as { sessions: unknown[] } & Record<string, unknown>;
      const fromRedis = redis ? await exportMemberSessions(redis, user) : [];
      // Inert: a member's messages may hold C1 and bidi controls (ops_export_inert.test.ts).
      ctx.out(inertJson({
        ...doc,
        sessions: [...doc.sessions, ...fromRedis],
        redis: redis ? "included" : "not configured",
      }));
    } finally {
      await redis?.close();
    }
  },
};

const FIELDS = ["usage_personal_days", "usage_row_months", "expired_session_days", "batch_rows"];

const retention: Command = {
  usage: "retention show | retention set field=value... --by <who>   retention periods " +
    `(${FIELDS.join(", ")})`,
  flags: { by: { type: "string" } },
  help: `Shows or changes how long personal fields and usage rows are kept (audited).

example:
  npm run ops -- retention set usage_personal_days=30 usage_row_months=13 --by alice@ops`,
  async run(ctx) {
    const [action, ...pairs] = ctx.args;
    if (action === "show") {
      return print(ctx, await ctx.sql`select * from ops.retention_settings`);
    }
    if (action !== "set" || pairs.length === 0) {
      throw new UsageError("retention show, or retention set field=value...");
    }
    const settings: Record<string, number> = {};
    for (const pair of pairs) {
      const [field, value] = pair.split("=");
      if (!field || !FIELDS.includes(field) || value === undefined) {
        throw new UsageError(`${pair}: expected field=value, field one of ${FIELDS.join(", ")}`);
      }
      settings[field] = numberFlag(value, field, { min: 0, integer: true });
    }
    const by = who(ctx);
    print(ctx, await ctx.sql`select * from ops.retention_set(${ctx.sql.json(settings)}, ${by})`);
  },
};

export const memberCommands: Record<string, Command> = {
  forget,
  export: exportUser,
  retention,
};
