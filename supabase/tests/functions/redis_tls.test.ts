/**
 * The Redis store over `rediss://` for real: a redis-server with TLS on
 * loopback and a test CA made at test time. The function trusting the CA
 * (DENO_CERT) answers and saves turns over it, with the session TTL on the
 * keys themselves, refreshed by every turn; one that does not trust it
 * refuses the connection: a turn that needs Redis before the model is 503
 * session_store_error, its row naming the certificate, nothing billed.
 */
import { assert, assertEquals, assertMatch } from "./assert.ts";
import { withProcesses } from "../support/process-harness.ts";
import { redisCli, startTlsRedis } from "../support/redis-tls.ts";
import { sessionKeys } from "../../functions/agent-chat/session-store.ts";

Deno.test("redis over TLS: a trusted CA answers and saves; TTL on the keys, refreshed each turn; an untrusted one is 503", async () => {
  const redis = await startTlsRedis();
  try {
    await withProcesses(async (p) => {
      const env = {
        AI_AGENT_SESSION_STORE: "redis",
        AI_AGENT_REDIS_URL: redis.url,
        AI_AGENT_SESSION_TTL_SECONDS: "600",
      };
      const trusted = await p.start({ ...env, DENO_CERT: redis.caFile });
      const m = await p.member();
      const ask = (url: string, body: Record<string, unknown>) =>
        fetch(url, {
          method: "POST",
          headers: { authorization: `Bearer ${m.token}`, "content-type": "application/json" },
          body: JSON.stringify({ org_id: m.org, ...body }),
        });
      const first = await ask(trusted.url, { message: "over TLS" });
      const body = await first.json();
      assertEquals(first.status, 200, JSON.stringify(body));
      const [owner, messages] = sessionKeys(body.session_id);
      assertEquals(await redisCli(redis.plainPort, "LLEN", messages), "2");
      const ttl = Number(await redisCli(redis.plainPort, "TTL", messages));
      assert(ttl > 590 && ttl <= 600, `messages TTL ${ttl}`);
      assert(Number(await redisCli(redis.plainPort, "TTL", owner)) >= 30 * 86400 - 10);
      // Age the session, then a turn refreshes its TTL.
      await redisCli(redis.plainPort, "EXPIRE", messages, "100");
      const second = await ask(trusted.url, { message: "again", session_id: body.session_id });
      assertEquals(second.status, 200);
      await second.body?.cancel();
      assertEquals(await redisCli(redis.plainPort, "LLEN", messages), "4");
      const refreshed = Number(await redisCli(redis.plainPort, "TTL", messages));
      assert(refreshed > 590, `refreshed TTL ${refreshed}`);

      // Not trusting the CA: a turn of that session (its history is in Redis) is refused
      // before the model with 503 session_store_error, whose row names the certificate.
      const untrusted = await p.start(env);
      const refused = await ask(untrusted.url, { message: "again", session_id: body.session_id });
      const error = await refused.json();
      assertEquals([refused.status, error.error.code], [503, "session_store_error"]);
      let rows: Array<Record<string, unknown>> = [];
      for (let i = 0; i < 100 && rows.length === 0; i++) {
        if (i > 0) await new Promise((r) => setTimeout(r, 50));
        rows = await p.sql`select error_code, error_message, total_tokens
          from public.agent_usage_events where request_id = ${error.error.request_id}`;
      }
      assertEquals(rows.length, 1);
      assertEquals([rows[0]!.error_code, rows[0]!.total_tokens], ["session_store_error", null]);
      assertMatch(String(rows[0]!.error_message), /certificate|UnknownIssuer|unknown ?issuer/i);
    });
  } finally {
    await redis.stop();
  }
});
