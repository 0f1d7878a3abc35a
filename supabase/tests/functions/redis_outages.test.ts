/**
 * The Redis store losing Redis mid-turn (after admission, while the model
 * answers). The save's outcome is unknown, so the client gets the answer
 * (200) and the save is retried in the background (README, runbook "A store
 * that fails after the model answered"): a TCP redis-server restarted lands
 * the turn and its one usage row, and the next turn is answered without
 * restarting the function; an Upstash REST outage that outlasts the turn's
 * deadline gives the save up into one session_store_error row that keeps the
 * tokens. Nothing billed is lost either way.
 */
import { assert, assertEquals } from "./assert.ts";
import type { Harness } from "../support/function-harness.ts";
import { startRedis } from "../support/redis.ts";
import { withHarness } from "../support/test-helpers.ts";
import { sessionKeys } from "../../functions/agent-chat/session-store.ts";
import { redisCli } from "../support/redis-tls.ts";

/** A turn whose model answer takes 600 ms; `outage` runs 150 ms into it. Answered 200. */
async function turnDuringOutage(h: Harness, outage: () => Promise<void>) {
  const m = await h.member();
  h.openai.script({ kind: "reply", text: "answered, saved later", latencyMs: 600 });
  const pending = h.call({ message: "mid-turn outage", org_id: m.orgId }, { token: m.token });
  await new Promise((r) => setTimeout(r, 150));
  await outage();
  const res = await pending;
  const body = await res.json();
  assertEquals(res.status, 200, JSON.stringify(body));
  return { m, body };
}

/** The request's rows once one is there (bounded wait: the save is retried in the background). */
async function rowsWhenThere(h: Harness, requestId: string) {
  let rows: Array<Record<string, unknown>> = [];
  for (let i = 0; i < 80 && rows.length === 0; i++) {
    if (i > 0) await new Promise((r) => setTimeout(r, 125));
    rows = await h.usageRows(requestId);
  }
  return rows;
}

Deno.test("redis (upstash): a REST outage past the deadline gives the save up into one row with the tokens", () =>
  withHarness({
    store: "redis",
    redisVia: "upstash",
    env: { AI_AGENT_TURN_DEADLINE_SECONDS: "2" },
  }, async (h) => {
    const { body } = await turnDuringOutage(h, () => h.upstash!.stop());
    const rows = await rowsWhenThere(h, body.request_id);
    assertEquals(rows.length, 1, "the model call keeps its one row");
    assertEquals(rows[0]!.error_code, "session_store_error");
    assertEquals(Number(rows[0]!.completion_tokens), body.usage.completion_tokens);
  }));

Deno.test("redis (tcp): a restart mid-turn lands the turn once Redis is back; the next turn answers", async () => {
  const redis = await startRedis();
  try {
    await withHarness({ store: "redis", env: { AI_AGENT_REDIS_URL: redis.url } }, async (h) => {
      const { m, body } = await turnDuringOutage(h, () => redis.pause());
      await redis.resume();
      const rows = await rowsWhenThere(h, body.request_id);
      assertEquals(rows.length, 1);
      assertEquals([rows[0]!.success, Number(rows[0]!.total_tokens)], [
        true,
        body.usage.total_tokens,
      ]);
      const [, messages] = sessionKeys(body.session_id);
      assertEquals(await redisCli(redis.port, "LLEN", messages), "2", "the turn is saved once");
      const next = await h.call({
        message: "back",
        org_id: m.orgId,
        session_id: body.session_id,
      }, { token: m.token });
      assertEquals(next.status, 200);
      await next.body?.cancel();
      assert(Number(await redisCli(redis.port, "LLEN", messages)) === 4);
    });
  } finally {
    await redis.stop();
  }
});
