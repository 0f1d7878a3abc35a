/**
 * Load: the profile's requests at 64 concurrent over 150 members (a third
 * from 10 heavy users who go over their limit), per store. No 5xx, every
 * user admitted exactly min(attempts, limit) times, every answered turn
 * stored with exactly one usage row (refusals are counted in aggregate
 * rows, so they have none of their own).
 */
import { pool, type ReliabilityContext, send, type Sent, STORES } from "./context.ts";

export async function load(ctx: ReliabilityContext): Promise<void> {
  for (const store of STORES) {
    const url = ctx.tight[store].url;
    // Each store starts with empty user buckets (the operator's clear function).
    await ctx.sql`select ops.clear_rate_limit('user:' || u) from unnest(${
      ctx.members.map((m) => m.user)
    }::text[]) as u`;
    const sessions = ctx.members.map(() => [crypto.randomUUID(), crypto.randomUUID()]);
    const plan = Array.from({ length: ctx.profile.loadRequests }, (_, i) => {
      // A third of the traffic comes from 10 heavy users, who go over their limit.
      const mi = i % 3 === 0 ? (i / 3) % 10 : (i * 7919) % ctx.members.length;
      return { mi, session: sessions[mi]![i % 2]!, n: i };
    });
    const results: Array<Sent & { mi: number; session: string }> = [];
    await pool(plan, ctx.profile.concurrency, async (p) => {
      const m = ctx.members[p.mi]!;
      const r = await send(url, { message: `load ${p.n}`, org_id: m.org, session_id: p.session }, {
        authorization: `Bearer ${m.token}`,
        "x-forwarded-for": `10.${p.mi % 250}.0.1`,
      });
      results.push({ ...r, mi: p.mi, session: p.session });
    });
    const fiveXX = results.filter((r) => r.status >= 500 || r.status === 0);
    ctx.record(
      `load (${store})`,
      `${ctx.profile.loadRequests} requests at ${ctx.profile.concurrency} concurrent: no 5xx`,
      results.length,
      results.length - fiveXX.length,
      fiveXX.length ? `statuses ${[...new Set(fiveXX.map((r) => r.status))].join(",")}` : "",
    );
    // Exact per bucket: each user is admitted min(attempts, limit) times.
    let exact = 0;
    for (let mi = 0; mi < ctx.members.length; mi++) {
      const mine = results.filter((r) => r.mi === mi);
      const admitted = mine.filter((r) => r.status === 200).length;
      const refused = mine.filter((r) => r.status === 429).length;
      if (
        admitted === Math.min(mine.length, ctx.profile.userLimit) &&
        admitted + refused === mine.length
      ) {
        exact++;
      }
    }
    ctx.record(
      `load (${store})`,
      `user buckets admit exactly min(attempts, ${ctx.profile.userLimit})`,
      ctx.members.length,
      exact,
    );
    // Every answered turn stored.
    const answered = results.filter((r) => r.status === 200);
    let stored = 0;
    if (store === "supabase") {
      const rows = await ctx
        .sql`select content from public.agent_session_messages where role = 'user' and content like 'load %'`;
      const contents = new Set(rows.map((r) => r.content as string));
      for (const r of answered) {
        if (contents.has((r.body?.message as string).replace("You said: ", ""))) stored++;
      }
    } else {
      const { Redis } = await import("ioredis");
      const client = new Redis(ctx.stack.redis.url);
      const contents = new Set<string>();
      for (const s of new Set(answered.map((r) => r.session))) {
        for (const raw of await client.lrange(`agent-chat:{${s}}:messages`, 0, -1)) {
          contents.add(JSON.parse(raw).content);
        }
      }
      client.disconnect();
      for (const r of answered) {
        if (contents.has((r.body?.message as string).replace("You said: ", ""))) stored++;
      }
    }
    ctx.record(`load (${store})`, "every answered turn is stored", answered.length, stored);
    const ids = answered.map((r) => r.requestId);
    // The stored request_id is the server's; the id this client sent is kept beside it.
    const usage = await ctx.sql`
      select metadata->>'client_request_id' as id, count(*)::int as n
      from public.agent_usage_events
      where metadata->>'client_request_id' = any(${ids})
      group by 1`;
    const one = usage.filter((u) => u.n === 1).length;
    ctx.record(`load (${store})`, "one usage row per answered request", ids.length, one);
    const p99 = results.map((r) => r.ms).sort((a, b) => a - b)[Math.floor(results.length * 0.99)]!;
    ctx.log(
      `load (${store}): p99 ${p99.toFixed(1)} ms, ${answered.length} answered, ${
        results.filter((r) => r.status === 429).length
      } refused`,
    );
  }
}
