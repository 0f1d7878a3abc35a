/**
 * Finding "logging off turns the controls off": with
 * AI_AGENT_USAGE_LOG_ENABLED=false the usage rows stop, but the spend and
 * token counters, token quotas, enforced budgets and budget alerts keep
 * working, on both session stores.
 */
import { assert, assertEquals } from "./assert.ts";
import { reserveTokens } from "../../functions/agent-chat/admission.ts";
import { DEFAULT_SYSTEM_PROMPT } from "../../functions/agent-chat/config.ts";
import type { Harness, Member } from "../support/function-harness.ts";
import { withHarness } from "../support/test-helpers.ts";

const STORES = ["supabase", "redis"] as const;
const QUESTION = "1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20";
const REPLY = "9,".repeat(400); // 800 bytes: the whole max output, one token a byte
const WORST = reserveTokens([{ content: DEFAULT_SYSTEM_PROMPT }, { content: QUESTION }], 800);

async function turn(h: Harness, m: Member): Promise<{ status: number; code?: string }> {
  const res = await h.call({ message: QUESTION, org_id: m.orgId }, { token: m.token });
  const body = await res.json();
  return res.status === 200 ? { status: 200 } : { status: res.status, code: body.error.code };
}

async function orgSpend(h: Harness, orgId: string): Promise<number> {
  const [row] = await h.sql`select coalesce(sum(usd), 0)::float8 as usd
    from ops.spend_counters where org_id = ${orgId}`;
  return Number(row!.usd);
}

for (const store of STORES) {
  Deno.test(`logging off turns the controls off (${store}): no rows, but counters, token quotas, enforced budgets and budget alerts hold`, () =>
    withHarness({ store, env: { AI_AGENT_USAGE_LOG_ENABLED: "false" } }, async (h) => {
      h.openai.perByteTokens = true;
      h.openai.fallback = { kind: "reply", text: REPLY };

      // Token quota: room for one and a half worst cases.
      const q = await h.member();
      await h.sql`select ops.policy_set(${q.orgId}::uuid, null,
        jsonb_build_object('user_tokens_per_day', ${Math.floor(1.5 * WORST)}::int), 'test')`;
      assertEquals(await turn(h, q), { status: 200 });
      const [counted] = await h.sql`select coalesce(sum(s), 0)::int as n from ops.token_counters c,
        unnest(c.slot_tokens) s where c.counter_key = ${`user:${q.userId}:day`}`;
      assertEquals(counted!.n, WORST, "the token counter has the turn's tokens");
      assertEquals(await turn(h, q), { status: 429, code: "rate_limit" }, "the quota holds");

      // Enforced budget: half a worst case, so the first turn passes it.
      const b = await h.member();
      const [price] = await h.sql`select ops.worst_case_usd('gpt-4.1-mini', ${WORST}) as usd`;
      const budget = Number(price!.usd) / 2;
      await h.sql`select ops.budget_set(${b.orgId}::uuid, ${budget.toFixed(9)}::numeric,
        'enforce', 'test')`;
      assertEquals(await turn(h, b), { status: 200 });
      assert(await orgSpend(h, b.orgId) > budget, "the spend counter has the turn's cost");
      assertEquals(await turn(h, b), { status: 402, code: "budget_exceeded" }, "the budget holds");
      const alerts = await h
        .sql`select subject from ops.evaluate_alerts(now() + interval '1 second')
        where kind = 'budget'`;
      assert(alerts.some((a) => a.subject === `org:${b.orgId}`), "the budget alert fires");

      const [rows] = await h.sql`select count(*)::int as n from public.agent_usage_events
        where org_id in (${q.orgId}, ${b.orgId})`;
      assertEquals(rows!.n, 0, "no usage rows");
      const [open] = await h.sql`select count(*)::int as n from ops.token_reservations
        where org_id in (${q.orgId}, ${b.orgId})`;
      assertEquals(open!.n, 0, "every reservation was released when its turn ended");
    }));
}
