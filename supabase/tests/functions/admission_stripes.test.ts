/**
 * Striped admission under concurrency (org_bucket_shards = K): token quotas
 * and enforced budgets decide under one of K admission locks, so up to K
 * turns of one org decide at once, each blind to the others' reservations.
 * The stated bounds, w = one turn's worst case: an enforced budget is
 * overshot by at most K w, a token quota by at most (K - 1) w; K = 1 admits
 * exactly as before (a budget overshot by at most w, a quota never).
 */
import postgres from "postgres";
import { assert, assertEquals } from "./assert.ts";
import { reserveTokens } from "../../functions/agent-chat/admission.ts";
import { DEFAULT_SYSTEM_PROMPT } from "../../functions/agent-chat/config.ts";
import { testUrls } from "../support/function-harness.ts";
import { withHarness } from "../support/test-helpers.ts";
import { waitFor } from "../support/attack.ts";

const K = 4;
/** Tokens each SQL-level turn reserves; at gpt-4.1-mini's highest price ($1.20 per 1M) $0.012. */
const RESERVE = 10_000;
const TURN_USD = RESERVE * 1.2 / 1e6;
/** The bound on every wait of these tests. */
const WAIT_MS = 15_000;

/**
 * K transactions of one org, each on a connection of its own and for a member
 * of its own (a member's user: bucket row would queue them), call
 * agent_begin_turn and stay open until all K have decided: every decision is
 * made with the other K - 1 in flight. Returns the outcomes after all commit.
 */
async function inFlightTogether(orgId: string, userIds: string[], prefix: string) {
  const db = postgres(testUrls().databaseUrl, { max: K, onnotice: () => {} });
  try {
    // A first turn (reserving nothing: no request id) makes the org: bucket's
    // K shard rows; made by the first of K open turns, the others would wait
    // for its insert.
    const [warm] = await db`select public.agent_begin_turn(p_org_id => ${orgId}::uuid,
      p_user_id => ${userIds[0]}::uuid, p_model => 'gpt-4.1-mini') ->> 'outcome' as outcome`;
    assertEquals(warm!.outcome, "ok");
    let release!: () => void;
    const gate = new Promise<void>((r) => (release = r));
    let decided = 0;
    const turns = Array.from({ length: K }, (_, i) =>
      db.begin(async (tx) => {
        const [row] = await tx`select public.agent_begin_turn(p_org_id => ${orgId}::uuid,
          p_user_id => ${userIds[i]}::uuid, p_request_id => ${`${prefix}-${i}`},
          p_reserve_tokens => ${RESERVE}, p_model => 'gpt-4.1-mini') ->> 'outcome' as outcome`;
        decided++;
        await gate;
        return row!.outcome as string;
      }));
    const seen = await waitFor(() => Promise.resolve(decided), (n) => n >= K, WAIT_MS);
    release();
    const outcomes = await Promise.all(turns);
    assertEquals(seen, K, `all ${K} decided while the others were open (no stripe waited)`);
    return outcomes;
  } finally {
    await db.end({ timeout: 1 });
  }
}

Deno.test(`striped admission: ${K} turns in flight at once overshoot an enforced budget by at most K turns' worst case`, () =>
  withHarness({}, async (h) => {
    const m = await h.member();
    const users = [m.userId];
    for (let i = 1; i < K; i++) users.push((await h.member(m.orgId)).userId);
    await h.sql`select ops.policy_set(${m.orgId}::uuid, null, ${
      JSON.stringify({ org_bucket_shards: K })
    }::text::jsonb, 'test')`;
    // 2.5 turns' worst case: one at a time, three are admitted.
    const budget = 2.5 * TURN_USD;
    await h.sql`select ops.budget_set(${m.orgId}::uuid, ${budget}::numeric, 'enforce', 'test')`;
    const outcomes = await inFlightTogether(m.orgId, users, "bud");
    assertEquals(outcomes, Array(K).fill("ok"), "none saw the others' reservations");
    const [held] = await h.sql`select coalesce(sum(usd), 0)::float8 as usd
      from ops.token_reservations where org_id = ${m.orgId}`;
    assert(
      Number(held!.usd) <= budget + K * TURN_USD,
      `reserved $${held!.usd} ≤ $${budget} + ${K} × $${TURN_USD}`,
    );
    const [next] = await h.sql`select public.agent_begin_turn(p_org_id => ${m.orgId}::uuid,
      p_user_id => ${m.userId}::uuid, p_request_id => 'bud-next', p_reserve_tokens => ${RESERVE},
      p_model => 'gpt-4.1-mini') ->> 'outcome' as outcome`;
    assertEquals(
      next!.outcome,
      "budget_exceeded",
      "once they committed, the next turn sees them all",
    );
  }));

Deno.test(`striped admission: ${K} turns in flight at once exceed a token quota by at most K - 1 turns' worst case`, () =>
  withHarness({}, async (h) => {
    const m = await h.member();
    const users = [m.userId];
    for (let i = 1; i < K; i++) users.push((await h.member(m.orgId)).userId);
    const quota = 2.5 * RESERVE;
    await h.sql`select ops.policy_set(${m.orgId}::uuid, null, ${
      JSON.stringify({ org_bucket_shards: K, org_tokens_per_minute: quota })
    }::text::jsonb, 'test')`;
    const outcomes = await inFlightTogether(m.orgId, users, "tok");
    const admitted = outcomes.filter((o) => o === "ok").length;
    assertEquals(admitted, K, `all ${K} admitted: ${outcomes}`);
    const [held] = await h.sql`select coalesce(sum(tokens), 0)::int as tokens
      from ops.token_reservations where org_id = ${m.orgId}`;
    assert(
      held!.tokens <= quota + (K - 1) * RESERVE,
      `reserved ${held!.tokens} ≤ ${quota} + ${K - 1} × ${RESERVE}`,
    );
  }));

/** What one turn with "hi" reserves over HTTP: the default system prompt, the message, 800 output tokens. */
const httpTurnUsd = reserveTokens([{ content: DEFAULT_SYSTEM_PROMPT }, { content: "hi" }], 800) *
  1.2 / 1e6;

for (const shards of [1, K]) {
  Deno.test(
    `striped admission over HTTP, K = ${shards}: 10 concurrent turns against a budget of 2.5 turns admit ${
      shards === 1 ? "exactly 3" : `3 to ${3 + K - 1}`
    }`,
    () =>
      withHarness({}, async (h) => {
        // Ten members: one member's turns queue on its user: bucket row.
        const m = await h.member();
        const members = [m];
        for (let i = 1; i < 10; i++) members.push(await h.member(m.orgId));
        await h.sql`select ops.policy_set(${m.orgId}::uuid, null, ${
          JSON.stringify({ org_bucket_shards: shards })
        }::text::jsonb, 'test')`;
        await h.sql`select ops.budget_set(${m.orgId}::uuid, ${
          (2.5 * httpTurnUsd).toFixed(6)
        }::numeric, 'enforce', 'test')`;
        // Admitted turns are held at the upstream until all ten were decided, so
        // none settles (and frees its reservation) while the others decide.
        let release!: () => void;
        h.openai.fallback = { kind: "reply", text: "ok", until: new Promise((r) => (release = r)) };
        const asked = h.openai.requests.length;
        let refused = 0;
        const calls = members.map(async (who) => {
          const res = await h.call({ message: "hi", org_id: m.orgId }, { token: who.token });
          const text = await res.text();
          const result = res.status === 200 ? "ok" : JSON.parse(text).error.code as string;
          if (result !== "ok") refused++;
          return result;
        });
        await waitFor(
          () => Promise.resolve(h.openai.requests.length - asked + refused),
          (decided) => decided >= 10,
          WAIT_MS,
        );
        release();
        const results = await Promise.all(calls);
        const admitted = results.filter((r) => r === "ok").length;
        assertEquals(results.filter((r) => r !== "ok" && r !== "budget_exceeded"), [], "only 402s");
        if (shards === 1) assertEquals(admitted, 3, `exact at K = 1: ${results}`);
        else assert(admitted >= 3 && admitted <= 3 + K - 1, `3 ≤ ${admitted} ≤ ${3 + K - 1}`);
        const [spend] = await waitFor(
          () =>
            h.sql`select coalesce(sum(usd), 0)::float8 as usd, coalesce(sum(billed_events), 0)::int as n
                from ops.spend_counters where org_id = ${m.orgId}`,
          (rows) => Number(rows[0]?.n) >= admitted,
          WAIT_MS,
        );
        assert(
          Number(spend!.usd) <= (2.5 + shards) * httpTurnUsd,
          `spent $${spend!.usd} ≤ budget + ${shards} turns' worst case`,
        );
      }),
  );
}
