/** The direct transport after the server killed its pooled connections (a restart, a failover). */
import { assert, assertEquals } from "./assert.ts";
import { startHarness, testUrls } from "../support/function-harness.ts";
import { startPostgres } from "../support/postgres.ts";
import { connectPostgres, reconnectBackoff } from "../../functions/agent-chat/database.ts";

Deno.test("direct transport: calls on connections the server terminated are sent once more on a fresh pool", async () => {
  const { databaseUrl } = testUrls();
  const url = new URL(databaseUrl);
  url.searchParams.set("application_name", "agent-chat-recovery-test");
  const h = await startHarness({ transport: "postgres", env: { AI_AGENT_DATABASE_URL: url.href } });
  try {
    const m = await h.member();
    const warm = await Promise.all(
      [1, 2, 3, 4].map(() => h.call({ message: "warm", org_id: m.orgId }, { token: m.token })),
    );
    for (const res of warm) {
      assertEquals(res.status, 200);
      await res.body?.cancel();
    }
    for (let round = 0; round < 3; round++) {
      const killed = await h.sql`select count(pg_terminate_backend(pid))::int as n
        from pg_stat_activity where application_name = 'agent-chat-recovery-test'`;
      assertEquals(killed[0]!.n > 0, true, "the pool had connections to kill");
      const after = await Promise.all(
        [1, 2, 3, 4].map(() => h.call({ message: "after", org_id: m.orgId }, { token: m.token })),
      );
      assertEquals(after.map((r) => r.status), [200, 200, 200, 200], `round ${round}`);
      for (const res of after) await res.body?.cancel();
    }
  } finally {
    await h.stop();
  }
});

Deno.test("direct transport: a pool that failed to connect through an outage reconnects as soon as the server is back", async () => {
  // Its own server, stopped and started again; the shared test database stays up.
  const pg = await startPostgres({ fast: true });
  const sql = connectPostgres(pg.url);
  const ask = (ms: number) =>
    Promise.race([
      sql.unsafe("select 1").then(() => "ok"),
      new Promise<string>((resolve) => setTimeout(() => resolve("no answer"), ms)),
    ]);
  try {
    assertEquals(await ask(5000), "ok");
    await pg.pause();
    // Calls keep failing through a 4.5 s outage: the pool's failed connects add up.
    const outage = performance.now() + 4500;
    while (performance.now() < outage) {
      await Promise.all(Array.from({ length: 8 }, () => ask(300).catch(() => "failed")));
    }
    await pg.resume();
    await new Promise((r) => setTimeout(r, 500));
    // postgres.js's default backoff (up to 20 s) kept such a pool waiting for
    // seconds after the restart; capped, it answers at once.
    const started = performance.now();
    assertEquals(await ask(3000), "ok", "answered within 3 s, half a second after the restart");
    assert(performance.now() - started < 3000);
  } finally {
    await sql.end({ timeout: 0 });
    await pg.stop();
  }
});

Deno.test("direct transport: the reconnect backoff never exceeds half a second", () => {
  for (let failures = 0; failures < 100; failures++) {
    const seconds = reconnectBackoff(failures);
    assert(seconds > 0 && seconds <= 0.5, `${failures} failures: ${seconds} s`);
  }
});
