/**
 * Attack tests of issue 10 over HTTP (tenant policies, token quotas, enforced
 * budgets, the kill switch, idempotent retries), as an attacker, a careless
 * client or a careless operator would go at them. Each test asserts the
 * documented behaviour, so it fails while the defect it names exists; the
 * SQL-level ones are in supabase/tests/database/090_attack_policies.test.sql.
 */
import { assert, assertEquals } from "./assert.ts";
import { type Harness, type Member, startHarness } from "../support/function-harness.ts";
import { RESERVATION_SECONDS } from "../../functions/agent-chat/admission.ts";

async function withHarness(
  options: Parameters<typeof startHarness>[0],
  fn: (h: Harness) => Promise<void>,
): Promise<void> {
  const h = await startHarness(options);
  try {
    await fn(h);
  } finally {
    await h.stop();
  }
}

/** Status and error code (or "ok") of a response, body consumed. */
async function outcome(res: Response): Promise<string> {
  const text = await res.text();
  return `${res.status} ${res.status === 200 ? "ok" : JSON.parse(text).error.code}`;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

function ask(h: Harness, m: Member, body: Record<string, unknown> = {}, headers = {}) {
  return h.call({ message: "hi", org_id: m.orgId, ...body }, { token: m.token, ip: m.ip, headers });
}

/** A settled usage row of `tokens` tokens for the member, written now, as the function writes it. */
async function settled(h: Harness, m: Member, tokens: number) {
  await h.sql`select public.agent_log_usage(jsonb_build_object(
    'request_id', ${crypto.randomUUID()}::text, 'org_id', ${m.orgId}::uuid, 'user_id', ${m.userId}::uuid,
    'model', 'gpt-4.1-mini', 'prompt_tokens', ${tokens - 1000}::int, 'completion_tokens', 1000,
    'total_tokens', ${tokens}::int, 'success', true))`;
}

/**
 * An OpenAI-compatible upstream (a proxy such as a self-hosted gateway, set
 * with OPENAI_BASE_URL) that answers with the usage it is given.
 */
function upstreamReporting(usage: Record<string, number>) {
  const state = { requests: 0 };
  const server = Deno.serve({ port: 0, hostname: "127.0.0.1", onListen: () => {} }, async (req) => {
    const body = await req.json();
    state.requests++;
    return Response.json({
      id: "chatcmpl-rogue",
      object: "chat.completion",
      created: 1,
      model: body.model,
      choices: [{ index: 0, message: { role: "assistant", content: "ok" }, finish_reason: "stop" }],
      usage,
    });
  });
  return {
    baseURL: `http://127.0.0.1:${server.addr.port}/v1`,
    state,
    stop: () => server.shutdown(),
  };
}

Deno.test("token quota: the Retry-After of a refusal is when the turn fits every quota (minute and day both full)", () =>
  withHarness({}, async (h) => {
    const m = await h.member();
    await h.sql`select ops.policy_set(${m.orgId}::uuid, null,
      '{"org_tokens_per_minute": 12000, "org_tokens_per_day": 12000}', 'attack')`;
    // 11,500 tokens settled a moment ago: a turn (which reserves well over 500) fits neither
    // the minute quota (free again within about a minute) nor the day quota (free in a day).
    await settled(h, m, 11500);
    const refused = await ask(h, m);
    const retryAfter = Number(refused.headers.get("retry-after"));
    assertEquals(await outcome(refused), "429 rate_limit");
    assert(
      retryAfter >= 86400 - 3600,
      `Retry-After ${retryAfter} s: a client that waits that long is refused again by the day quota`,
    );
  }));

Deno.test("enforced budget: an upstream reporting negative token counts never lowers the month's spend", async () => {
  const rogue = upstreamReporting({
    prompt_tokens: 5000,
    completion_tokens: -50000,
    total_tokens: 1,
  });
  try {
    await withHarness({ env: { OPENAI_BASE_URL: rogue.baseURL } }, async (h) => {
      const m = await h.member();
      await h.sql`select ops.budget_set(${m.orgId}::uuid, 0.005, 'enforce', 'attack')`;
      const results: string[] = [];
      for (let i = 0; i < 4; i++) results.push(await outcome(await ask(h, m)));
      const [spend] = await h.sql`select coalesce(sum(usd), 0)::float8 as usd
        from ops.spend_counters where org_id = ${m.orgId}`;
      const [tokens] = await h
        .sql`select min(least(prompt_tokens, completion_tokens, total_tokens)) as min
        from public.agent_usage_events where org_id = ${m.orgId}`;
      assert(Number(spend!.usd) >= 0, `month-to-date spend $${spend!.usd} after ${results}`);
      assert(Number(tokens!.min) >= 0, `a usage row stored ${tokens!.min} tokens`);
    });
  } finally {
    await rogue.stop();
  }
});

Deno.test("enforced budget: a model without a price row is not a way around the budget (AI_AGENT_MODEL=gpt-4.1)", () =>
  withHarness({ env: { AI_AGENT_MODEL: "gpt-4.1" } }, async (h) => {
    const m = await h.member();
    const [price] = await h.sql`select ops.worst_case_usd('gpt-4.1', 1000) as usd`;
    assertEquals(
      price!.usd,
      null,
      "precondition: gpt-4.1 has no price row (only gpt-4.1-mini does)",
    );
    // Without a price no spend can be counted against the budget: fail closed,
    // every turn refused, the detail naming the model, no model call.
    await h.sql`select ops.budget_set(${m.orgId}::uuid, 0.000001, 'enforce', 'attack')`;
    const results: string[] = [];
    for (let i = 0; i < 4; i++) results.push(await outcome(await ask(h, m)));
    assertEquals(results, Array(4).fill("402 budget_exceeded"));
    assertEquals(h.openai.requests.length, 0, "no model call");
    const [row] = await h.sql`select error_message from public.agent_usage_events
      where user_id = ${m.userId}::uuid and error_code = 'budget_exceeded' limit 1`;
    assert(String(row!.error_message).includes("gpt-4.1 has no price"), String(row!.error_message));
  }));

Deno.test("idempotency: a client that honours 409's Retry-After while its answer is computed is not rate-limited for its next question", () =>
  withHarness({ env: { AI_AGENT_OPENAI_TIMEOUT_MS: "15000" } }, async (h) => {
    const m = await h.member();
    // The runbook's pilot tenant allows 20 requests a member a minute; 4 makes the test short.
    await h
      .sql`select ops.policy_set(${m.orgId}::uuid, null, '{"user_max_requests": 4}', 'attack')`;
    h.openai.script({ kind: "reply", text: "a slow, careful answer", latencyMs: 5000 });
    const key = { "idempotency-key": "mobile-retry-1" };
    const first = ask(h, m, {}, key);
    await sleep(200);
    const seen: string[] = [];
    for (let i = 0; i < 20; i++) {
      const res = await ask(h, m, {}, key);
      const status = await outcome(res);
      seen.push(status);
      if (status !== "409 request_in_progress") break;
      await sleep(Number(res.headers.get("retry-after")) * 1000);
    }
    assertEquals(await outcome(await first), "200 ok");
    assertEquals(seen.at(-1), "200 ok", "the replay");
    // One turn answered: the member's next question is the second of four allowed.
    const next = await outcome(
      await ask(h, m, { message: "and the next step?" }, {
        "idempotency-key": "mobile-retry-2",
      }),
    );
    assertEquals(
      next,
      "200 ok",
      `after obeying Retry-After (${seen.join(", ")}) the member's next question is refused: ` +
        "each 409 costs a user: slot and Retry-After is always 1 s",
    );
  }));

Deno.test("token quota: a reservation outlives the longest turn the platform runs (400 s wall clock on paid plans)", () => {
  // A stream may run until the Edge Function's wall-clock limit; its
  // reservation stops counting after RESERVATION_SECONDS, after which
  // concurrent turns are admitted against quota and budget room that is
  // still being spent. The Idempotency-Key lease (10 minutes) was sized for
  // the same limit.
  assert(RESERVATION_SECONDS >= 400, `reservations lapse after ${RESERVATION_SECONDS} s`);
});

// Defences that held (kept for coverage).

Deno.test("kill switch: with the global switch off, a keyed stream reaches no model, reserves nothing and charges no bucket", () =>
  withHarness({}, async (h) => {
    const m = await h.member();
    await h
      .sql`select ops.policy_set(${m.orgId}::uuid, null, '{"org_tokens_per_minute": 100000}', 'attack')`;
    await h.sql`select ops.budget_set(${m.orgId}::uuid, 10, 'enforce', 'attack')`;
    await h
      .sql`select ops.switch_off(null, 'Down for maintenance: ask your group officer.', 'attack')`;
    try {
      const res = await ask(h, m, { stream: true }, { "idempotency-key": "during-outage" });
      assertEquals(res.status, 503);
      const body = await res.json();
      assertEquals(body.error.code, "assistant_disabled");
      assertEquals(body.error.message, "Down for maintenance: ask your group officer.");
      assertEquals(h.openai.requests.length, 0);
      const [r] = await h.sql`select
        (select count(*) from ops.token_reservations where org_id = ${m.orgId})::int as reservations,
        (select count(*) from ops.rate_limits where bucket_key in (${"user:" + m.userId}, ${
        "org:" + m.orgId
      }))::int as buckets,
        (select count(*) from ops.idempotency_keys where user_id = ${m.userId})::int as keys`;
      assertEquals(r, { reservations: 0, buckets: 0, keys: 0 });
    } finally {
      await h.sql`select ops.switch_on(null, 'attack')`;
    }
    assertEquals(await outcome(await ask(h, m)), "200 ok", "switched on again: served");
  }));

Deno.test("policies: a tenant's limits never show in the RateLimit headers of another tenant's member", () =>
  withHarness({}, async (h) => {
    const tenant = await h.member();
    const outsider = await h.member();
    await h.sql`select ops.policy_set(${tenant.orgId}::uuid, null,
      '{"user_max_requests": 777, "org_max_requests": 7777}', 'attack')`;
    // The outsider names the tenant's org: 403, held to the global limit.
    const res = await h.call({ message: "hi", org_id: tenant.orgId }, {
      token: outsider.token,
      ip: outsider.ip,
    });
    assertEquals(await outcome(res), "403 forbidden");
    const headers = [...res.headers.entries()].map(([k, v]) => `${k}: ${v}`).join("\n");
    assert(!/\b777\b|\b7777\b/.test(headers), headers);
  }));
