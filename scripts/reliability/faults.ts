/**
 * Faults: 8 clients send new conversations while PostgreSQL (Supabase
 * store), then Redis (Redis store), is stopped and started again. Every
 * response within 10 s with a documented status, recovery without
 * restarting the function, no answered turn lost.
 */
import { DOCUMENTED, type ReliabilityContext, send, type Sent, type Store } from "./context.ts";

export async function faults(ctx: ReliabilityContext): Promise<void> {
  async function trafficDuring(
    store: Store,
    ms: number,
    fault: () => Promise<void>,
    recover: () => Promise<void>,
  ) {
    const url = ctx.roomy[store].url;
    const out: Array<Sent & { message: string; session: string }> = [];
    let stop = false;
    let n = 0;
    const workers = Array.from({ length: 8 }, async () => {
      while (!stop) {
        const i = n++;
        const m = ctx.fresh(i);
        const session = crypto.randomUUID();
        const message = `fault ${store} ${i} ${crypto.randomUUID()}`;
        const r = await send(url, { message, org_id: m.org, session_id: session }, {
          authorization: `Bearer ${m.token}`,
        });
        out.push({ ...r, message, session });
      }
    });
    await new Promise((r) => setTimeout(r, ms));
    await fault();
    await new Promise((r) => setTimeout(r, ms));
    await recover();
    const recoveredAt = performance.now();
    // Recovery without restarting the function: requests started two seconds
    // after the service is back must all be answered.
    await new Promise((r) => setTimeout(r, 2000 + 2 * ms));
    stop = true;
    await Promise.all(workers);
    return { out, recoveredAt };
  }
  async function faultChecks(
    area: string,
    store: Store,
    { out, recoveredAt }: {
      out: Array<Sent & { message: string; session: string }>;
      recoveredAt: number;
    },
  ) {
    const bounded = out.filter((r) => r.status !== 0 && r.ms < 10_000 && DOCUMENTED.has(r.status));
    const odd = out.filter((r) => !bounded.includes(r)).slice(0, 3).map((r) =>
      `${r.status} after ${r.ms.toFixed(0)} ms: ${r.text.slice(0, 80)}`
    );
    ctx.record(
      area,
      "every response within 10 s with a documented status",
      out.length,
      bounded.length,
      `${odd.join("; ")} statuses: ${
        Object.entries(
          out.reduce(
            (a, r) => ({ ...a, [r.status]: (a[r.status] ?? 0) + 1 }),
            {} as Record<number, number>,
          ),
        ).map(([k, v]) => `${k}×${v}`).join(" ")
      }`,
    );
    const after = out.filter((r) => r.startedAt > recoveredAt + 2000);
    ctx.record(
      area,
      "recovers without restarting the function (requests started 2 s after the restart)",
      after.length,
      after.filter((r) => r.status === 200).length,
      // Which ones, when, and how: the function's log line has the detail under this request id.
      after.filter((r) => r.status !== 200).slice(0, 3).map((r) =>
        `+${(r.startedAt - recoveredAt).toFixed(0)} ms: ${r.status} after ${
          r.ms.toFixed(0)
        } ms (x-request-id ${r.requestId})`
      ).join("; "),
    );
    const answered = out.filter((r) => r.status === 200);
    let kept = 0;
    if (store === "supabase") {
      const rows = await ctx
        .sql`select content from public.agent_session_messages where content = any(${
        answered.map((r) => r.message)
      })`;
      kept = new Set(rows.map((r) => r.content)).size;
    } else {
      const { Redis } = await import("ioredis");
      const client = new Redis(ctx.stack.redis.url);
      for (const r of answered) {
        const list = await client.lrange(`agent-chat:{${r.session}}:messages`, 0, -1);
        if (list.some((raw) => JSON.parse(raw).content === r.message)) kept++;
      }
      client.disconnect();
    }
    ctx.record(area, "no admitted-and-answered turn lost", answered.length, kept);
  }

  await faultChecks(
    "postgres stopped and restarted",
    "supabase",
    await trafficDuring(
      "supabase",
      ctx.profile.outageMs,
      () => ctx.stack.postgres.pause(),
      () => ctx.stack.postgres.resume(),
    ),
  );
  await faultChecks(
    "redis stopped and restarted",
    "redis",
    await trafficDuring(
      "redis",
      ctx.profile.outageMs,
      () => ctx.stack.redis.pause(),
      () => ctx.stack.redis.resume(),
    ),
  );
}
