/**
 * The circuit breaker end to end, on both session stores, on a clock the
 * test moves: a failing primary opens after AI_AGENT_BREAKER_FAILURES, is
 * skipped (no call reaches it) while open, then probed once; a success
 * closes it. With every breaker open nothing is sent: 503
 * upstream_unavailable with Retry-After, JSON and stream alike, one row.
 */
import { assert, assertEquals, assertMatch } from "./assert.ts";
import { attemptsOf, brief, withFallbacks } from "../support/fallbacks.ts";
import { expectError } from "../support/test-helpers.ts";
import { testUrls } from "../support/function-harness.ts";
import { runOps } from "../../../scripts/ops.ts";

/** `npm run ops -- breakers --json`: the rows of `upstream`. */
async function breakers(upstream: string): Promise<Array<Record<string, unknown>>> {
  let out = "";
  const db = testUrls().databaseUrl;
  const code = await runOps(["breakers", "--json", "--db", db], (s) => (out += s), () => {});
  assertEquals(code, 0);
  return (JSON.parse(out) as Array<{ upstream: string }>).filter((r) => r.upstream === upstream);
}

function clock() {
  let t = 0;
  return { now: () => t, advance: (seconds: number) => void (t += seconds * 1000) };
}

const BREAKER = { AI_AGENT_BREAKER_FAILURES: "2", AI_AGENT_BREAKER_OPEN_SECONDS: "30" };

for (const store of ["supabase", "redis"] as const) {
  Deno.test(`breaker (${store}): opens, skips the primary, then one probe closes it`, () => {
    const c = clock();
    return withFallbacks({ store, env: BREAKER, now: c.now }, async (h, backup) => {
      const m = await h.member();
      const ask = async (message: string) => {
        const res = await h.call({ message, org_id: m.orgId }, { token: m.token });
        const body = await res.json();
        assertEquals(res.status, 200, JSON.stringify(body));
        const [row] = await h.usageRows(body.request_id);
        return { body, attempts: attemptsOf(row!) };
      };
      h.openai.script({ kind: "error", status: 500 }, { kind: "error", status: 500 });
      const first = await ask("one");
      assertEquals(first.attempts[0]!.breaker, undefined);
      const second = await ask("two");
      assertEquals(second.attempts[0]!.breaker, "opened", "the second failure opens it");
      assertEquals(h.openai.requests.length, 2);
      // Open: the primary is not called at all; the fallback answers.
      const skipped = await ask("three");
      assertMatch(skipped.body.model, /^backup-model/);
      assertEquals(skipped.attempts.map(brief)[0], "primary-model skipped:breaker_open none");
      assertEquals(h.openai.requests.length, 2, "no call reaches an open upstream");
      assertEquals(backup.requests.length, 3);
      assert(h.logs.some((l) => l.event === "breaker_open"), "the transition is logged");
      // The runbook's check: the breaker as every isolate's rows show it.
      const [primary] = await breakers(`primary-model@${new URL(h.openai.baseURL).host}`);
      assertEquals(primary!.likely_state, "open (in some isolates)");
      assert(Number(primary!.skipped_recently) >= 1);
      // After the open period one probe goes to the primary; its success closes it.
      c.advance(30);
      const probe = await ask("four");
      assertMatch(probe.body.model, /^primary-model/);
      assertEquals(probe.attempts.map((a) => a.breaker), ["closed"]);
      const after = await ask("five");
      assertMatch(after.body.model, /^primary-model/);
      assertEquals(h.openai.requests.length, 4);
    });
  });

  Deno.test(`breaker (${store}): every breaker open is 503 upstream_unavailable, nothing sent`, () => {
    const c = clock();
    const env = { ...BREAKER, AI_AGENT_BREAKER_FAILURES: "1" };
    return withFallbacks({ store, env, now: c.now }, async (h, backup) => {
      const m = await h.member();
      h.openai.script({ kind: "error", status: 502 });
      backup.script({ kind: "error", status: 503 });
      const failing = await h.call({ message: "hi", org_id: m.orgId }, { token: m.token });
      await expectError(failing, 502, "openai_error");
      c.advance(10);
      const sent = h.openai.requests.length + backup.requests.length;
      for (const stream of [false, true]) {
        const res = await h.call({ message: "hi", org_id: m.orgId, stream }, { token: m.token });
        assertEquals(res.headers.get("retry-after"), "20");
        const body = await expectError(res, 503, "upstream_unavailable");
        const rows = await h.usageRows(body.error.request_id);
        assertEquals(rows.length, 1);
        assertEquals([rows[0]!.error_code, rows[0]!.total_tokens], ["upstream_unavailable", null]);
        assertEquals(attemptsOf(rows[0]!).map((a) => a.outcome), [
          "skipped:breaker_open",
          "skipped:breaker_open",
          "skipped:breaker_open",
        ]);
      }
      assertEquals(h.openai.requests.length + backup.requests.length, sent, "nothing sent");
    });
  });
}
