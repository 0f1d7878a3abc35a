/** The direct transport after the server killed its pooled connections (a restart, a failover). */
import { assertEquals } from "./assert.ts";
import { startHarness, testUrls } from "../support/function-harness.ts";

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
