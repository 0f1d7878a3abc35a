/**
 * Finding "free traffic": every request costs what it should. Replays and
 * 409s of an Idempotency-Key take a slot of the user's replay: bucket (ten
 * times the user limit, so a client polling as the protocol asks keeps its
 * questions) and are counted in (aggregated) rows; a quota no turn can fit is refused without a
 * Retry-After promise; a connection that never reached the upstream and a
 * 5xx answer bill nothing; a timeout after the request was sent is billed
 * its estimated prompt.
 */
import { assert, assertEquals } from "./assert.ts";
import type { Harness, Member } from "../support/function-harness.ts";
import { withDb, withHarness } from "../support/test-helpers.ts";

function keyed(h: Harness, m: Member, key: string) {
  return h.call({ message: "hi", org_id: m.orgId }, {
    token: m.token,
    ip: m.ip,
    headers: { "idempotency-key": key },
  });
}

async function statusOf(res: Response): Promise<number> {
  await res.body?.cancel();
  return res.status;
}

Deno.test("free traffic: replays of an Idempotency-Key take a replay: slot (ten times the user limit), are 429 past it and are counted in rows", async () => {
  let userId = "";
  await withHarness({}, async (h) => {
    const m = await h.member();
    userId = m.userId;
    await h.sql`select ops.policy_set(${m.orgId}::uuid, null, '{"user_max_requests": 2}', 'test')`;
    assertEquals(await statusOf(await keyed(h, m, "replay-1")), 200);
    const statuses = [];
    for (let i = 0; i < 24; i++) statuses.push(await statusOf(await keyed(h, m, "replay-1")));
    assertEquals(statuses.filter((s) => s === 200).length, 20, "20 replays: 10 × the user limit");
    assertEquals(statuses.slice(20), [429, 429, 429, 429]);
    assertEquals(h.openai.requests.length, 1, "one model call");
    const next = await h.call({ message: "next question", org_id: m.orgId }, { token: m.token });
    assertEquals(await statusOf(next), 200, "replays did not eat the user's questions");
  });
  // Stopping the function flushed its ledger: the replays are counted.
  await withDb(async (sql) => {
    const [replays] = await sql`select coalesce(sum(event_count), 0)::int as n,
        count(*) filter (where total_tokens is not null)::int as billed
      from public.agent_usage_events where user_id = ${userId} and metadata ->> 'replayed' = 'true'`;
    assertEquals([replays!.n, replays!.billed], [20, 0], "20 replays in rows, none billed");
  });
});

Deno.test("free traffic: 409s of a running Idempotency-Key take replay: slots, 429 past them", () =>
  withHarness({}, async (h) => {
    const m = await h.member();
    await h.sql`select ops.policy_set(${m.orgId}::uuid, null, '{"user_max_requests": 1}', 'test')`;
    h.openai.script({ kind: "reply", text: "slow", latencyMs: 2000 });
    const first = keyed(h, m, "busy-1");
    const until = performance.now() + 5000;
    while (h.openai.requests.length < 1 && performance.now() < until) {
      await new Promise((r) => setTimeout(r, 20));
    }
    const statuses = [];
    for (let i = 0; i < 12; i++) statuses.push(await statusOf(await keyed(h, m, "busy-1")));
    assertEquals(statuses, [...Array(10).fill(409), 429, 429], "10 × the user limit of 1");
    assertEquals(await statusOf(await first), 200);
  }));

Deno.test("free traffic: a token quota smaller than any turn is refused without a Retry-After it could never keep", () =>
  withHarness({}, async (h) => {
    const m = await h.member();
    await h
      .sql`select ops.policy_set(${m.orgId}::uuid, null, '{"user_tokens_per_day": 100}', 'test')`;
    const res = await h.call({ message: "hi", org_id: m.orgId }, { token: m.token });
    const body = await res.json();
    assertEquals([res.status, body.error.code], [429, "rate_limit"]);
    assertEquals(res.headers.get("retry-after"), null, "no promise that waiting helps");
    assert(/too long for the token quota/.test(body.error.message), body.error.message);
    assertEquals(h.openai.requests.length, 0);
  }));

/** A loopback port nothing listens on. */
function closedPort(): number {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const { port } = listener.addr as Deno.NetAddr;
  listener.close();
  return port;
}

Deno.test("free traffic: a connection that never opened bills nothing, even retried", () =>
  withHarness({
    env: {
      OPENAI_BASE_URL: `http://127.0.0.1:${closedPort()}/v1`,
      AI_AGENT_OPENAI_MAX_RETRIES: "1",
    },
  }, async (h) => {
    const m = await h.member();
    const res = await h.call({ message: "hi", org_id: m.orgId }, { token: m.token });
    assertEquals(res.status, 502);
    const [row] = await h.usageRows(res.headers.get("x-request-id")!);
    assertEquals([row?.error_code, row?.prompt_tokens, row?.total_tokens], [
      "openai_error",
      null,
      null,
    ]);
  }));

Deno.test("free traffic: a 5xx answer bills nothing; a timeout after the request was sent bills its estimated prompt", () =>
  withHarness({ env: { AI_AGENT_OPENAI_TIMEOUT_MS: "1000" } }, async (h) => {
    const m = await h.member();
    h.openai.script({ kind: "error", status: 500 }, { kind: "hang" });
    const failed = await h.call({ message: "hi", org_id: m.orgId }, { token: m.token });
    assertEquals(failed.status, 502);
    const [five] = await h.usageRows(failed.headers.get("x-request-id")!);
    assertEquals([five?.prompt_tokens, five?.total_tokens], [null, null], "5xx: nothing billed");
    const late = await h.call({ message: "hi", org_id: m.orgId }, { token: m.token });
    assertEquals(late.status, 502);
    const [timeout] = await h.usageRows(late.headers.get("x-request-id")!);
    assert(Number(timeout?.prompt_tokens) > 0, "the prompt that was sent is billed");
    assertEquals(timeout?.completion_tokens, 0);
    assertEquals((timeout?.metadata as Record<string, unknown>).tokens_estimated, true);
  }));
