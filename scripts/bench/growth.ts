/**
 * Growth: the first request on a session that already holds N messages
 * (10 to 10,000), per store, one at a time, median of the profile's
 * samples. The history cap (20) bounds what a turn reads and trims.
 */
import { Redis } from "ioredis";
import { fixed, markdownTable, median } from "./stats.ts";
import {
  type BenchContext,
  manyOrg,
  manyUser,
  type ScenarioResult,
  type Store,
} from "./context.ts";
import { functionProcess } from "../../supabase/tests/support/local-stack.ts";

const SIZES = [10, 100, 1000, 10_000];

async function seed(ctx: BenchContext, redis: Redis, store: Store, session: string, n: number) {
  const org = manyOrg(1);
  const user = manyUser(1);
  if (store === "supabase") {
    await ctx.sql`insert into public.agent_sessions (id, org_id, user_id, expires_at)
                  values (${session}, ${org}, ${user}, now() + interval '1 day')`;
    await ctx.sql`insert into public.agent_session_messages (session_id, role, content)
                  select ${session}::uuid, case when i % 2 = 1 then 'user' else 'assistant' end,
                         'stored message number ' || i
                  from generate_series(1, ${n}::int) i`;
    return;
  }
  const key = `agent-chat:{${session}}:messages`;
  const batch = Array.from({ length: n }, (_, i) =>
    JSON.stringify({
      role: i % 2 ? "assistant" : "user",
      content: `stored message number ${i + 1}`,
    }));
  for (let i = 0; i < batch.length; i += 1000) {
    await redis.rpush(key, ...batch.slice(i, i + 1000));
  }
  await redis.set(`agent-chat:{${session}}:owner`, `${org}:${user}`);
  await redis.expire(key, 86400);
}

export async function growth(ctx: BenchContext): Promise<ScenarioResult> {
  const redis = new Redis(ctx.stack.redis.url);
  const ms: Record<Store, Record<number, number>> = { supabase: {}, redis: {} };
  try {
    for (const store of ["supabase", "redis"] as const) {
      const fn = await ctx.stack.spawn(functionProcess, ctx.functionEnv(store, "direct"));
      for (const n of SIZES) {
        const samples: number[] = [];
        for (let s = 0; s < ctx.profile.growthSamples; s++) {
          const session = crypto.randomUUID();
          await seed(ctx, redis, store, session, n);
          const r = await ctx.post(fn.url, ctx.tokenOf(1), {
            message: "And now?",
            org_id: manyOrg(1),
            session_id: session,
          });
          if (r.status !== 200) {
            throw new Error(`growth request failed: ${r.status} ${JSON.stringify(r.json)}`);
          }
          samples.push(r.ms);
        }
        ms[store][n] = median(samples);
        ctx.log(`growth ${store} ${n}: ${fixed(ms[store][n]!)} ms`);
      }
      await fn.stop();
    }
  } finally {
    redis.disconnect();
  }
  return {
    sections: {
      growth: markdownTable(
        ["stored messages", "supabase store ms", "redis store ms"],
        SIZES.map((n) => [n, fixed(ms.supabase[n]!), fixed(ms.redis[n]!)]),
      ),
    },
    targets: (["supabase", "redis"] as const).map((store) => {
      const ratio = ms[store][10_000]! / ms[store][10]!;
      return {
        target: `10 → 10,000 stored messages within 1.5× (${store})`,
        measured: `${fixed(ratio)}×`,
        met: ratio <= 1.5,
      };
    }),
  };
}
