/**
 * A clean stop, on the function as its own process (as index.ts wires it):
 * SIGTERM stops taking requests, lets a turn under way finish, and writes
 * the refusal ledger's pending counts; after a restart the rows are all
 * there and the function answers again.
 */
import { assert, assertEquals } from "./assert.ts";
import { withProcesses } from "../support/process-harness.ts";

Deno.test("shutdown: SIGTERM finishes the turn under way and writes the counted refusals", () =>
  withProcesses(async ({ sql, start, member, script }) => {
    const env = {
      // Far longer than the test: only the stop can write the counted refusals.
      AI_AGENT_REFUSAL_LOG_INTERVAL_SECONDS: "3600",
      AI_AGENT_IP_REFUSAL_LIMIT: "1000",
    };
    const first = await start(env);
    const { org, token } = await member();
    const ip = `192.0.2.${Math.floor(Math.random() * 250) + 1}`;
    const call = (url: string, headers: Record<string, string>) =>
      fetch(url, {
        method: "POST",
        headers: { "content-type": "application/json", "x-forwarded-for": ip, ...headers },
        body: JSON.stringify({ message: "a slow answer", org_id: org }),
      });

    for (let i = 0; i < 7; i++) {
      const res = await call(first.url, {});
      assertEquals(res.status, 401);
      await res.body?.cancel();
    }
    // A turn under way when the signal arrives: the upstream takes 1.5 s.
    await script({ kind: "reply", text: "finished anyway", latencyMs: 1500 });
    const slow = call(first.url, { authorization: `Bearer ${token}` });
    await new Promise((resolve) => setTimeout(resolve, 300));
    const stopped = first.stop();
    const res = await slow;
    const body = await res.json();
    assertEquals([res.status, body.message], [200, "finished anyway"]);
    await stopped;
    const refused = await call(first.url, {}).then(() => false, () => true);
    assert(refused, "a stopped function takes no request");

    const rows = await sql`
      select event_count, metadata from public.agent_usage_events
      where error_code = 'anonymous_refusals'
        and metadata -> 'top_ips' @> ${sql.json([{ ip }])}`;
    assertEquals(rows.length, 1, "the counted refusals are written on stop");
    assertEquals(rows[0]!.event_count, 7);
    const turn =
      await sql`select success from public.agent_usage_events where request_id = ${body.request_id}`;
    assertEquals(turn.map((r) => r.success), [true]);

    // Restarted, it answers again; nothing was lost meanwhile.
    const second = await start(env);
    const again = await call(second.url, { authorization: `Bearer ${token}` });
    assertEquals(again.status, 200);
    await again.body?.cancel();
  }));
