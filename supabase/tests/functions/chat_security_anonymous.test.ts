/**
 * agent-chat's security controls, attacked end to end: anonymous refusals are
 * counted per isolate and written as one aggregated row per interval; an
 * address block past its refusal limit is answered 429 before any work.
 *
 * Waits are bounded polls on an observable (a row, a log line, a recorded
 * upstream request), never a bare sleep that a slow machine could lose.
 */
import { assert, assertEquals, assertMatch } from "./assert.ts";
import { expectError, statusOf, withDb, withHarness } from "../support/test-helpers.ts";
import { type Meta, pooled, testIp } from "../support/attack.ts";

// ---------------------------------------------------------------------------
// 2. Anonymous refusals: counted per isolate, one aggregated row per interval
// ---------------------------------------------------------------------------

Deno.test("anonymous flood: 2,000 refusals from one address cost no database call; 429 from the 31st; one aggregated row", () =>
  withHarness({ env: { AI_AGENT_REFUSAL_LOG_INTERVAL_SECONDS: "3600" } }, async (h) => {
    const since = new Date(Date.now() - 1000);
    const ip = testIp();
    const m = await h.member();
    const named = crypto.randomUUID();
    const calls = h.gateway.postgrest.calls;
    const statuses: number[] = [];
    // 20 without credentials, 10 with a wrong method: the limit (30) is reached exactly.
    for (let i = 0; i < 20; i++) {
      statuses.push(await statusOf(await h.call({ message: "x", org_id: named }, { ip })));
    }
    for (let i = 0; i < 10; i++) {
      statuses.push(
        await statusOf(await fetch(h.url, { method: "GET", headers: { "x-forwarded-for": ip } })),
      );
    }
    assertEquals(statuses, [...Array(20).fill(401), ...Array(10).fill(405)]);
    // From now on: 429 before authentication, even with a valid token.
    const valid = await h.call({ message: "x", org_id: m.orgId }, { ip, token: m.token });
    const refused = await expectError(valid, 429, "rate_limit");
    assertMatch(valid.headers.get("retry-after") ?? "", /^\d+$/);
    assertEquals(refused.error.code, "rate_limit");
    const rest = await pooled(1969, 16, async (i) =>
      await statusOf(
        i % 2
          ? await h.call({ message: "x", org_id: named }, { ip, token: "forged.token.value" })
          : await h.call({ message: "x", org_id: named }, { ip }),
      ));
    assertEquals(rest.filter((s) => s !== 429).length, 0, "every later request is 429");
    assertEquals(h.gateway.postgrest.calls, calls, "2,000 refusals, no database call");
    assertEquals(h.openai.requests.length, 0);
    // One structured log line per request.
    const lines = h.logs.filter((l) => l.event === "request");
    assertEquals(lines.length, 2000);
    assertEquals(new Set(lines.map((l) => l.fields.request_id)).size, 2000);
    assertEquals(lines.filter((l) => l.fields.status === 429).length, 1970);
    await h.stop().catch(() => {});
    await withDb(async (sql) => {
      const rows = await sql`select * from public.agent_usage_events
        where error_code = 'anonymous_refusals' and created_at >= ${since}
          and metadata->'top_ips' @> ${sql.json([{ ip }])}`;
      assertEquals(rows.length, 1, "one aggregated row for the isolate's interval");
      const row = rows[0]!;
      assertEquals(row.org_id, null);
      assertEquals(row.user_id, null);
      const meta = row.metadata as Meta;
      assertEquals(meta.by_code, { unauthorized: 20, method_not_allowed: 10, rate_limit: 1970 });
      assertEquals((meta.top_ips as Array<{ ip: string; count: number }>)[0], { ip, count: 2000 });
      const named_ = await sql`select 1 from public.agent_usage_events where org_id = ${named}`;
      assertEquals(named_.length, 0);
    });
  }));

Deno.test("anonymous flood from 2,000 addresses: one row per interval at most, top_ips bounded", () =>
  withHarness({ env: { AI_AGENT_REFUSAL_LOG_INTERVAL_SECONDS: "1" } }, async (h) => {
    const started = performance.now();
    const since = new Date(Date.now() - 1000);
    const statuses = await pooled(2000, 16, async (i) =>
      await statusOf(
        await h.call({ message: "x", org_id: crypto.randomUUID() }, {
          ip: `198.19.${i >> 8}.${i & 255}`,
        }),
      ));
    assertEquals(statuses.filter((s) => s !== 401).length, 0, "no address reached its limit");
    await h.stop().catch(() => {});
    const seconds = (performance.now() - started) / 1000;
    await withDb(async (sql) => {
      const rows = await sql`select * from public.agent_usage_events
        where error_code = 'anonymous_refusals' and created_at >= ${since}
          and metadata->'top_ips'->0->>'ip' like '198.19.%'`;
      assert(rows.length >= 1);
      assert(
        rows.length <= Math.ceil(seconds) + 1,
        `${rows.length} rows in ${seconds.toFixed(1)} s at a 1 s interval`,
      );
      let total = 0;
      for (const r of rows) {
        const meta = r.metadata as Meta;
        assert((meta.top_ips as unknown[]).length <= 10);
        total += (meta.by_code as Record<string, number>).unauthorized ?? 0;
      }
      assertEquals(total, 2000, "every refusal is counted in some row");
    });
  }));

Deno.test("anonymous flood from one IPv6 /64: rotating the interface id does not escape the 429", () =>
  // A single IPv6 subscriber holds a whole /64: 2^64 addresses to rotate through.
  withHarness({ env: { AI_AGENT_REFUSAL_LOG_INTERVAL_SECONDS: "3600" } }, async (h) => {
    const prefix = `2001:db8:${Math.floor(Math.random() * 0xffff).toString(16)}:1`;
    const statuses: number[] = [];
    for (let i = 0; i < 60; i++) {
      const ip = `${prefix}:${(i + 1).toString(16)}:0:0:1`;
      statuses.push(await statusOf(await h.call({ message: "x" }, { ip })));
    }
    assertEquals(statuses.filter((s) => s === 429).length, 30, "429 from the 31st request");
  }));

Deno.test("anonymous refusals: the aggregated row's event_count is the number of refusals", () =>
  withHarness({ env: { AI_AGENT_REFUSAL_LOG_INTERVAL_SECONDS: "3600" } }, async (h) => {
    const since = new Date(Date.now() - 1000);
    const ip = testIp();
    for (let i = 0; i < 45; i++) await statusOf(await h.call({ message: "x" }, { ip }));
    await h.stop().catch(() => {});
    await withDb(async (sql) => {
      const rows = await sql`select * from public.agent_usage_events
        where error_code = 'anonymous_refusals' and created_at >= ${since}
          and metadata->'top_ips' @> ${sql.json([{ ip }])}`;
      assertEquals(rows.length, 1);
      assertEquals(rows[0]!.event_count, 45);
    });
  }));
