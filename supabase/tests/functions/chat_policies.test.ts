/**
 * Tenant policies end to end, over HTTP with both session stores: a policy
 * change applies to the next request, a channel throttle, token quotas (429
 * scope tokens with Retry-After), enforced budgets (402, overshoot bounded
 * under concurrency) and the kill switch (503 with the operator's message).
 * Policies are set through the operator functions, as the runbook does.
 */
import { assert, assertEquals } from "./assert.ts";
import { reserveTokens } from "../../functions/agent-chat/admission.ts";
import { DEFAULT_SYSTEM_PROMPT } from "../../functions/agent-chat/config.ts";
import { withHarness } from "../support/test-helpers.ts";
import { RESERVATION_SECONDS } from "../../functions/agent-chat/admission.ts";

const STORES = ["supabase", "redis"] as const;

/** Status and error code (or "ok") of a response, body consumed. */
async function outcome(res: Response): Promise<string> {
  const text = await res.text();
  return `${res.status} ${res.status === 200 ? "ok" : JSON.parse(text).error.code}`;
}

/** Polls `probe` until `done` accepts its value (bounded); returns the last value. */
async function waitFor<T>(probe: () => Promise<T>, done: (v: T) => boolean, ms = 5000) {
  const until = performance.now() + ms;
  let value = await probe();
  while (!done(value) && performance.now() < until) {
    await new Promise((r) => setTimeout(r, 20));
    value = await probe();
  }
  return value;
}

/** A channel name no other test uses. */
const freshChannel = () => `c${crypto.randomUUID().slice(0, 8)}`;

/** What one turn with `message` reserves: the default system prompt, the message, 800 output tokens. */
const worstCase = (message: string) =>
  reserveTokens([{ content: DEFAULT_SYSTEM_PROMPT }, { content: message }], 800);

for (const store of STORES) {
  Deno.test(`policies (${store}): a tenant's new limit applies to the next request, no restart`, () =>
    withHarness({ store }, async (h) => {
      const m = await h.member();
      const call = async () =>
        await outcome(await h.call({ message: "hi", org_id: m.orgId }, { token: m.token }));
      assertEquals([await call(), await call(), await call()], ["200 ok", "200 ok", "200 ok"]);
      await h
        .sql`select ops.policy_set(${m.orgId}::uuid, null, '{"user_max_requests": 3}', 'test')`;
      const refused = await h.call({ message: "hi", org_id: m.orgId }, { token: m.token });
      assertEquals(refused.headers.get("ratelimit-limit"), "3");
      assertEquals(await outcome(refused), "429 rate_limit");
      await h
        .sql`select ops.policy_set(${m.orgId}::uuid, null, '{"user_max_requests": 10}', 'test')`;
      assertEquals(await call(), "200 ok", "a raised limit admits more at once");
    }));

  Deno.test(`policies (${store}): the tenant switch answers 503 assistant_disabled with the operator's message`, () =>
    withHarness({ store }, async (h) => {
      const m = await h.member();
      const other = await h.member();
      const message = "The assistant is paused: reach your group officer or call 0800 000 000.";
      await h.sql`select ops.switch_off(${m.orgId}::uuid, ${message}, 'test')`;
      const res = await h.call({ message: "hi", org_id: m.orgId }, { token: m.token });
      const text = await res.text();
      assertEquals(res.status, 503, text);
      const body = JSON.parse(text);
      assertEquals(body.error.code, "assistant_disabled");
      assertEquals(body.error.message, message);
      assertEquals(h.openai.requests.length, 0, "no model call");
      assertEquals(
        await outcome(await h.call({ message: "hi", org_id: other.orgId }, { token: other.token })),
        "200 ok",
        "other tenants are served",
      );
      await h.sql`select ops.switch_on(${m.orgId}::uuid, 'test')`;
      assertEquals(
        await outcome(await h.call({ message: "hi", org_id: m.orgId }, { token: m.token })),
        "200 ok",
      );
    }));

  Deno.test(`token quota (${store}): a turn that would exceed the org's tokens is 429 scope tokens with Retry-After`, () =>
    withHarness({ store }, async (h) => {
      const m = await h.member();
      const reserve = worstCase("hi");
      // One open turn fits, two do not; settled turns use far fewer tokens than they reserve.
      await h.sql`select ops.policy_set(${m.orgId}::uuid, null,
        jsonb_build_object('org_tokens_per_minute', ${Math.floor(reserve * 1.5)}::int), 'test')`;
      h.openai.script({ kind: "reply", text: "slow answer", latencyMs: 1500 });
      const first = h.call({ message: "hi", org_id: m.orgId }, { token: m.token });
      const open = await waitFor(
        () => h.sql`select tokens from ops.token_reservations where org_id = ${m.orgId}`,
        (rows) => rows.length === 1,
      );
      assertEquals(open[0]?.tokens, reserve, "the turn reserved its worst case");
      const refused = await h.call({ message: "hi", org_id: m.orgId }, { token: m.token });
      const retryAfter = Number(refused.headers.get("retry-after"));
      assertEquals(await outcome(refused), "429 rate_limit");
      // At the latest when the open reservation lapses.
      assert(retryAfter >= 1 && retryAfter <= RESERVATION_SECONDS, `Retry-After ${retryAfter}`);
      assertEquals(await outcome(await first), "200 ok");
      await waitFor(
        () => h.sql`select 1 from ops.token_reservations where org_id = ${m.orgId}`,
        (rows) => rows.length === 0,
      );
      assertEquals(
        await outcome(await h.call({ message: "hi", org_id: m.orgId }, { token: m.token })),
        "200 ok",
        "once the first turn settled with its real usage, the next fits",
      );
    }));

  Deno.test(`enforced budget (${store}): 402 budget_exceeded, and 10 concurrent turns overshoot by at most one turn`, () =>
    withHarness({ store }, async (h) => {
      const m = await h.member();
      // gpt-4.1-mini's highest price is $1.20 per 1M tokens: 2.5 turns' worst case.
      const turnUsd = worstCase("hi") * 1.2 / 1e6;
      await h.sql`select ops.budget_set(${m.orgId}::uuid, ${
        (2.5 * turnUsd).toFixed(6)
      }::numeric, 'enforce', 'test')`;
      // Every admitted turn is held at the upstream until all ten were decided, so
      // no turn settles (and frees its reservation) while others are admitted.
      let release!: () => void;
      h.openai.fallback = { kind: "reply", text: "ok", until: new Promise((r) => (release = r)) };
      const asked = h.openai.requests.length;
      let refused = 0;
      const calls = Array.from({ length: 10 }, async () => {
        const result = await outcome(
          await h.call({ message: "hi", org_id: m.orgId }, { token: m.token }),
        );
        if (result !== "200 ok") refused++;
        return result;
      });
      await waitFor(
        () => Promise.resolve(h.openai.requests.length - asked + refused),
        (decided) => decided >= 10,
        15_000,
      );
      release();
      const results = await Promise.all(calls);
      const admitted = results.filter((r) => r === "200 ok").length;
      assertEquals(
        admitted,
        3,
        `admitted while spend + reservations were below the budget: ${results}`,
      );
      assertEquals(results.filter((r) => r === "402 budget_exceeded").length, 7);
      const [spend] = await waitFor(
        () =>
          h.sql`select coalesce(sum(usd), 0)::float8 as usd from ops.spend_counters where org_id = ${m.orgId}`,
        (rows) => Number(rows[0]?.usd) > 0,
      );
      assert(Number(spend!.usd) <= 2.5 * turnUsd + turnUsd, `spent $${spend!.usd}`);
    }));
}

Deno.test("channel throttle: a channel: limit for everyone refuses past it with 429 scope channel, other channels unaffected", () =>
  withHarness({}, async (h) => {
    const m = await h.member();
    const other = await h.member();
    const channel = freshChannel();
    await h.sql`select ops.policy_set(null, ${channel}, '{"channel_max_requests": 2}', 'incident')`;
    try {
      const call = async (who: typeof m, ch: string) =>
        await h.call({ message: "hi", org_id: who.orgId, user_id: who.userId, channel: ch }, {
          token: h.secretKey,
        });
      assertEquals(await outcome(await call(m, channel)), "200 ok");
      assertEquals(await outcome(await call(other, channel)), "200 ok");
      const refused = await call(m, channel);
      assert(
        refused.headers.get("ratelimit-policy")?.startsWith('"channel"'),
        refused.headers.get("ratelimit-policy") ?? "no RateLimit-Policy",
      );
      assertEquals(await outcome(refused), "429 rate_limit");
      assertEquals(await outcome(await call(m, "app")), "200 ok", "other channels are served");
    } finally {
      await h.sql`select ops.policy_clear(null, ${channel}, 'incident')`;
    }
  }));

Deno.test("kill switch: the global switch turns everyone off with its message, and back on", () =>
  withHarness({}, async (h) => {
    const m = await h.member();
    const message = "OpenAI is down: human support at help.example.test.";
    await h.sql`select ops.switch_off(null, ${message}, 'oncall')`;
    try {
      const res = await h.call({ message: "hi", org_id: m.orgId }, { token: m.token });
      const text = await res.text();
      assertEquals(res.status, 503, text);
      assertEquals(JSON.parse(text).error.message, message);
    } finally {
      await h.sql`select ops.switch_on(null, 'oncall')`;
    }
    assertEquals(
      await outcome(await h.call({ message: "hi", org_id: m.orgId }, { token: m.token })),
      "200 ok",
    );
  }));
