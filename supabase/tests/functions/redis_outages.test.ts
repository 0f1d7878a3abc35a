/**
 * The Redis store losing Redis mid-turn (after admission, while the model
 * answers): an Upstash REST outage and a TCP redis-server restart are each a
 * 503 session_store_error, the model call already made keeps its one usage
 * row (with its tokens), and the next turn is answered once Redis is back,
 * without restarting the function.
 */
import { assert, assertEquals } from "./assert.ts";
import type { Harness } from "../support/function-harness.ts";
import { startRedis } from "../support/redis.ts";
import { expectError, withHarness } from "../support/test-helpers.ts";

/** A turn whose model answer takes 600 ms; `outage` runs 150 ms into it. */
async function turnDuringOutage(h: Harness, outage: () => Promise<void>) {
  const m = await h.member();
  h.openai.script({ kind: "reply", text: "answered, not saved", latencyMs: 600 });
  const pending = h.call({ message: "mid-turn outage", org_id: m.orgId }, { token: m.token });
  await new Promise((r) => setTimeout(r, 150));
  await outage();
  const body = await expectError(await pending, 503, "session_store_error");
  const rows = await h.usageRows(body.error.request_id);
  assertEquals(rows.length, 1, "the model call keeps its one row");
  assertEquals(rows[0]!.error_code, "session_store_error");
  assert(Number(rows[0]!.completion_tokens) > 0, "with the tokens the upstream reported");
  return m;
}

Deno.test("redis (upstash): a REST outage mid-turn is 503 session_store_error, the call metered", () =>
  withHarness({ store: "redis", redisVia: "upstash" }, async (h) => {
    await turnDuringOutage(h, () => h.upstash!.stop());
  }));

Deno.test("redis (tcp): a restart mid-turn is 503, metered; the next turn is answered", async () => {
  const redis = await startRedis();
  try {
    await withHarness({ store: "redis", env: { AI_AGENT_REDIS_URL: redis.url } }, async (h) => {
      const m = await turnDuringOutage(h, () => redis.pause());
      await redis.resume();
      let status = 0;
      // ioredis reconnects on its own backoff (at most 1 s): bounded retries.
      for (let i = 0; i < 20 && status !== 200; i++) {
        if (i > 0) await new Promise((r) => setTimeout(r, 250));
        const res = await h.call({ message: "back", org_id: m.orgId }, { token: m.token });
        status = res.status;
        await res.body?.cancel();
      }
      assertEquals(status, 200);
    });
  } finally {
    await redis.stop();
  }
});
