/**
 * Finding "reservations under-estimate": a byte-level tokenizer can count one
 * token per byte (digits with commas do), so a turn must reserve that much.
 * Against an upstream that bills exactly one token per UTF-8 byte (the
 * stand-in's `perByteTokens`), on both session stores and under concurrency:
 * a token quota is never exceeded, every admitted turn is metered at most
 * what it reserved, and an enforced budget ends at most one turn's worst
 * case over (docs/operations.md, "How far a quota or a budget can be
 * overshot").
 */
import { assert, assertEquals } from "./assert.ts";
import { reserveTokens } from "../../functions/agent-chat/admission.ts";
import { DEFAULT_SYSTEM_PROMPT } from "../../functions/agent-chat/config.ts";
import type { Harness } from "../support/function-harness.ts";
import { withHarness } from "../support/test-helpers.ts";

const STORES = ["supabase", "redis"] as const;

/** Text a byte-level tokenizer counts about one token per byte. */
const digits = (bytes: number) => {
  let s = "";
  for (let i = 1; s.length < bytes; i++) s += `${i},`;
  return s.slice(0, bytes);
};
const QUESTION = digits(300);
const REPLY = digits(800); // the harness's max output tokens: cut there anyway

async function turn(h: Harness, m: { orgId: string; token: string }, sessionId?: string) {
  const res = await h.call(
    { message: QUESTION, org_id: m.orgId, ...(sessionId ? { session_id: sessionId } : {}) },
    { token: m.token },
  );
  const body = await res.json();
  return { status: res.status, body, requestId: res.headers.get("x-request-id")! };
}

async function userTokens(h: Harness, userId: string): Promise<number> {
  const [row] = await h.sql`select coalesce(sum(total_tokens), 0)::int as n
    from public.agent_usage_events where user_id = ${userId}`;
  return Number(row!.n);
}

for (const store of STORES) {
  Deno.test(`reservations under-estimate (${store}): 40 concurrent turns of one-token-per-byte text with history never pass the daily user quota`, () =>
    withHarness({ store }, async (h) => {
      h.openai.perByteTokens = true;
      h.openai.fallback = { kind: "reply", text: REPLY };
      const m = await h.member();
      // 40 sessions with one turn each, before any quota.
      const first = await Promise.all(Array.from({ length: 40 }, () => turn(h, m)));
      assert(first.every((t) => t.status === 200), JSON.stringify(first[0]));
      const used = await userTokens(h, m.userId);
      const history = [{ content: QUESTION }, { content: REPLY }];
      const worst = reserveTokens(
        [{ content: DEFAULT_SYSTEM_PROMPT }, ...history, { content: QUESTION }],
        800,
      );
      const quota = used + Math.floor(4.5 * worst);
      await h.sql`select ops.policy_set(${m.orgId}::uuid, null,
        jsonb_build_object('user_tokens_per_day', ${quota}::int), 'test')`;

      const second = await Promise.all(first.map((t) => turn(h, m, t.body.session_id)));
      const admitted = second.filter((t) => t.status === 200);
      assertEquals(admitted.length, 4, "4 worst cases fit in 4.5, the fifth does not");
      assert(second.every((t) => t.status === 200 || t.status === 429), "the rest are 429");
      for (const t of admitted) {
        const [row] = await h.usageRows(t.requestId);
        assertEquals(
          row?.total_tokens,
          worst,
          "metered exactly its worst case: the bound is tight",
        );
      }
      const total = await userTokens(h, m.userId);
      assert(total <= quota, `metered ${total} tokens against a quota of ${quota}`);
    }));

  Deno.test(`reservations under-estimate (${store}): an enforced budget under one-token-per-byte turns ends at most one turn's worst case over`, () =>
    withHarness({ store }, async (h) => {
      h.openai.perByteTokens = true;
      h.openai.fallback = { kind: "reply", text: REPLY, latencyMs: 200 };
      const m = await h.member();
      const worst = reserveTokens([{ content: DEFAULT_SYSTEM_PROMPT }, { content: QUESTION }], 800);
      const [price] = await h.sql`select ops.worst_case_usd('gpt-4.1-mini', ${worst}) as usd`;
      const worstUsd = Number(price!.usd);
      const budget = 2.5 * worstUsd;
      await h.sql`select ops.budget_set(${m.orgId}::uuid, ${budget.toFixed(9)}::numeric,
        'enforce', 'test')`;
      const results = await Promise.all(Array.from({ length: 12 }, () => turn(h, m)));
      const statuses = results.map((r) => r.status);
      // At least 3 fit while only reservations count (2.5 worst cases); a turn that settled
      // (its prompt costs less than the worst case's highest price) can make room for one more.
      const admitted = statuses.filter((s) => s === 200).length;
      assert(admitted >= 3 && admitted < 12, `${statuses}`);
      assertEquals(statuses.filter((s) => s === 402).length, 12 - admitted, `${statuses}`);
      const [spend] = await h.sql`select coalesce(sum(usd), 0)::float8 as usd
        from ops.spend_counters where org_id = ${m.orgId}`;
      assert(Number(spend!.usd) > 0, "the turns were charged");
      assert(
        Number(spend!.usd) <= budget + worstUsd,
        `spent $${spend!.usd} against $${budget} + one worst case $${worstUsd}`,
      );
    }));
}

Deno.test("model names: an upstream reporting an unpriced name is charged at the requested model's price, and the name raises an alert", () =>
  withHarness({}, async (h) => {
    h.openai.perByteTokens = true;
    h.openai.reportModel = "openai/gpt-4.1-mini";
    const m = await h.member();
    const t = await turn(h, m);
    assertEquals(t.status, 200);
    assertEquals(t.body.model, "openai/gpt-4.1-mini", "the client sees the name reported");
    const [row] = await h.usageRows(t.requestId);
    assertEquals(row?.model, "openai/gpt-4.1-mini");
    const metadata = row?.metadata as Record<string, unknown>;
    assertEquals(metadata.requested_model, "gpt-4.1-mini");
    assertEquals(metadata.priced_as, "gpt-4.1-mini");
    const [spend] = await h.sql`select c.usd = ops.event_cost_usd('gpt-4.1-mini', now(),
        ${row!.prompt_tokens as number}, 0, ${row!
      .completion_tokens as number}) as same, c.usd::float8 as usd
      from ops.spend_counters c where c.org_id = ${m.orgId}`;
    assert(spend?.same === true && Number(spend.usd) > 0, `charged $${spend?.usd}, not $0`);
    const alerts = await h.sql`select subject from ops.evaluate_alerts(now() + interval '1 second')
      where kind = 'unpriced_model'`;
    assert(alerts.some((a) => a.subject === "model:openai/gpt-4.1-mini"), JSON.stringify(alerts));
  }));
