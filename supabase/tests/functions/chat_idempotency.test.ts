/**
 * Idempotency-Key end to end: real HTTP to the function behind the gateway
 * stand-in, real Postgres and Redis, both session stores, JSON and SSE.
 * Model calls are counted on the upstream; buckets, usage rows and stored
 * turns are read from the database (and, for the Redis store, through the
 * history the next turn sends to the model).
 */
import { assert, assertEquals } from "./assert.ts";
import type { Harness, Member } from "../support/function-harness.ts";
import { parseSse } from "../support/sse.ts";
import { withHarness } from "../support/test-helpers.ts";
import { completionResponse } from "../support/completion.ts";

const STORES = ["supabase", "redis"] as const;
type Json = Record<string, unknown>;

/** Polls `probe` until `done` accepts its value (bounded); returns the last value. */
async function waitFor<T>(probe: () => T, done: (v: T) => boolean, timeoutMs = 5000): Promise<T> {
  const until = performance.now() + timeoutMs;
  let value = probe();
  while (!done(value) && performance.now() < until) {
    await new Promise((r) => setTimeout(r, 20));
    value = probe();
  }
  return value;
}

type Meta = Record<string, unknown>;

function keyed(h: Harness, m: Member, body: Json, key: string): Promise<Response> {
  return h.call(body, { token: m.token, ip: m.ip, headers: { "idempotency-key": key } });
}

/** The answer a response carries: the JSON body, or the SSE events folded into one. */
async function answerOf(res: Response): Promise<Json> {
  const text = await res.text();
  assertEquals(res.status, 200, text);
  if (!res.headers.get("content-type")?.startsWith("text/event-stream")) return JSON.parse(text);
  const events = parseSse(text);
  assertEquals(events.at(-1)!.event, "done", text);
  const message = events.filter((e) => e.event === "delta").map((e) => e.data.text).join("");
  const { session_id, ...done } = events.at(-1)!.data;
  return { session_id, message, ...done };
}

async function userBucket(h: Harness, m: Member): Promise<number> {
  const rows = await h.sql`select slot_total from ops.rate_limits where bucket_key = ${
    "user:" + m.userId
  }`;
  return Number(rows[0]?.slot_total ?? 0);
}

async function rowsOf(h: Harness, m: Member) {
  return await h.sql`select error_code, success, metadata from public.agent_usage_events
    where user_id = ${m.userId} order by id`;
}

/** The history the next turn on `sessionId` sends the model: the turns stored so far. */
async function storedTurns(
  h: Harness,
  m: Member,
  sessionId: string,
  sent: () => Array<{ role: string; content: string }>,
) {
  const res = await h.call({ message: "and then?", org_id: m.orgId, session_id: sessionId }, {
    token: m.token,
    ip: m.ip,
  });
  assertEquals(res.status, 200);
  await res.body?.cancel();
  return sent().filter((msg) => msg.role !== "system").slice(0, -1);
}

/**
 * An OpenAI-compatible upstream that holds its first answer until
 * `release()` and counts the calls it gets (JSON or SSE, with usage).
 */
function heldUpstream() {
  let open!: () => void;
  const gate = new Promise<void>((r) => (open = r));
  const state = { requests: 0, last: [] as Array<{ role: string; content: string }> };
  const server = Deno.serve({ port: 0, hostname: "127.0.0.1", onListen: () => {} }, async (req) => {
    const body = await req.json();
    state.last = body.messages;
    if (++state.requests === 1) await gate;
    const usage = { prompt_tokens: 20, completion_tokens: 2, total_tokens: 22 };
    return completionResponse(body, `answer ${state.requests}`, usage, "chatcmpl-held");
  });
  return {
    baseURL: `http://127.0.0.1:${server.addr.port}/v1`,
    state,
    release: () => open(),
    stop: () => server.shutdown(),
  };
}

for (const store of STORES) {
  Deno.test(`idempotency (${store}): a retry replays the answer as JSON and as SSE, without a model call, a bucket or a second turn; another body is 422`, () =>
    withHarness({ store }, async (h) => {
      const m = await h.member();
      const body = { message: "what is a savings group?", org_id: m.orgId, metadata: { a: 1 } };
      const first = await answerOf(await keyed(h, m, body, "retry-key-1"));
      assertEquals(h.openai.requests.length, 1);
      assertEquals(await userBucket(h, m), 1);

      const again = await keyed(h, m, { ...body, metadata: { a: 1 } }, "retry-key-1");
      assertEquals(again.headers.get("idempotent-replayed"), "true");
      assert(again.headers.get("x-request-id") !== first.request_id, "a request id of its own");
      assertEquals(
        await answerOf(again),
        first,
        "the stored answer: the same JSON value (stored as jsonb, so not the same bytes)",
      );
      const streamed = await keyed(h, m, { ...body, stream: true }, '"retry-key-1"');
      assertEquals(streamed.headers.get("idempotent-replayed"), "true");
      assertEquals(await answerOf(streamed), first, "the same answer as one SSE delta");

      const other = await keyed(h, m, { ...body, message: "something else" }, "retry-key-1");
      assertEquals(other.status, 422);
      assertEquals((await other.json()).error.code, "idempotency_mismatch");

      assertEquals(h.openai.requests.length, 1, "one model call in all");
      // The answered turn and the 422 (a refusal, charged like the others); replays take
      // slots of the replay: bucket instead, and are counted like refusals.
      assertEquals(await userBucket(h, m), 2, "one charge for the turn, one for the 422");
      const rows = await rowsOf(h, m);
      const billed = rows.filter((r) => r.success && !(r.metadata as Meta).replayed);
      assertEquals(billed.length, 1, "one answered row: replays are counted without tokens");
      assertEquals(rows.filter((r) => !r.success).map((r) => r.error_code), [
        "idempotency_mismatch",
      ]);
      const turns = await storedTurns(
        h,
        m,
        String(first.session_id),
        () => h.openai.requests.at(-1)!.body.messages,
      );
      assertEquals(turns.map((t) => t.content), [body.message, first.message], "stored once");

      // Keys are per user: another member's identical request is its own turn.
      const n = await h.member(m.orgId);
      await answerOf(await keyed(h, n, body, "retry-key-1"));
      assertEquals(h.openai.requests.length, 3);
    }));

  Deno.test(`idempotency (${store}): a failed attempt releases its key, so the retry runs`, () =>
    withHarness({ store }, async (h) => {
      const m = await h.member();
      const body = { message: "hello", org_id: m.orgId };
      h.openai.script({ kind: "error", status: 500 });
      const failed = await keyed(h, m, body, "flaky-1");
      assertEquals(failed.status, 502);
      await failed.body?.cancel();
      const retried = await keyed(h, m, body, "flaky-1");
      assertEquals(retried.headers.get("idempotent-replayed"), null);
      const answer = await answerOf(retried);
      assertEquals(h.openai.requests.length, 2, "the retry called the model");
      const replay = await keyed(h, m, body, "flaky-1");
      assertEquals(await answerOf(replay), answer);
      assertEquals(h.openai.requests.length, 2);
    }));

  for (const stream of [false, true]) {
    Deno.test(`idempotency (${store}, ${stream ? "SSE" : "JSON"}): a duplicate while the first runs is 409 with Retry-After; one model call, one turn`, async () => {
      const upstream = heldUpstream();
      try {
        await withHarness({ store, env: { OPENAI_BASE_URL: upstream.baseURL } }, async (h) => {
          const m = await h.member();
          const body = { message: "slow question", org_id: m.orgId, stream };
          const pending = keyed(h, m, body, "double-tap");
          await waitFor(() => upstream.state.requests, (n) => n >= 1);
          const duplicate = await keyed(h, m, body, "double-tap");
          assertEquals(duplicate.status, 409);
          assertEquals(duplicate.headers.get("retry-after"), "1");
          assertEquals((await duplicate.json()).error.code, "request_in_progress");
          const mismatch = await keyed(h, m, { ...body, message: "other" }, "double-tap");
          assertEquals(mismatch.status, 422, "another body is a mismatch even while running");
          await mismatch.body?.cancel();
          upstream.release();
          const first = await answerOf(await pending);
          assertEquals(first.message, "answer 1");
          const replay = await keyed(h, m, body, "double-tap");
          assertEquals(await answerOf(replay), first);
          assertEquals(upstream.state.requests, 1, "exactly one model call");
          // The turn and the 422 (a refusal, charged); the 409 and the replay take replay: slots.
          assertEquals(await userBucket(h, m), 2, "the turn and the 422");
          const rows = await rowsOf(h, m);
          assertEquals(rows.filter((r) => r.success && !(r.metadata as Meta).replayed).length, 1);
          const turns = await storedTurns(
            h,
            m,
            String(first.session_id),
            () => upstream.state.last,
          );
          assertEquals(turns.map((t) => t.content), ["slow question", "answer 1"], "stored once");
        });
      } finally {
        upstream.release();
        await upstream.stop();
      }
    });
  }
}

Deno.test("idempotency: a malformed key is 400 before any bucket or model call", () =>
  withHarness({}, async (h) => {
    const m = await h.member();
    for (const key of ["", "k".repeat(256), '"unterminated']) {
      const res = await keyed(h, m, { message: "hi", org_id: m.orgId }, key);
      assertEquals(res.status, 400, key);
      assertEquals((await res.json()).error.code, "invalid_request");
    }
    assertEquals(h.openai.requests.length, 0);
    assertEquals(await userBucket(h, m), 0);
  }));

Deno.test("idempotency: with the usage log off, the key still completes and replays", () =>
  withHarness({ store: "redis", env: { AI_AGENT_USAGE_LOG_ENABLED: "false" } }, async (h) => {
    const m = await h.member();
    const body = { message: "hi", org_id: m.orgId };
    const first = await answerOf(await keyed(h, m, body, "quiet-1"));
    const again = await keyed(h, m, body, "quiet-1");
    assertEquals(again.headers.get("idempotent-replayed"), "true");
    assertEquals(await answerOf(again), first);
    assertEquals(h.openai.requests.length, 1);
    assertEquals((await rowsOf(h, m)).length, 0, "no usage row");
  }));

Deno.test("idempotency (direct Postgres transport): claim, replay and mismatch", () =>
  withHarness({ transport: "postgres" }, async (h) => {
    const m = await h.member();
    const body = { message: "it's a \\ 'quoted' question", org_id: m.orgId };
    const first = await answerOf(await keyed(h, m, body, `it's \\ "odd"`));
    assertEquals(await answerOf(await keyed(h, m, body, `it's \\ "odd"`)), first);
    const other = await keyed(h, m, { ...body, message: "no" }, `it's \\ "odd"`);
    assertEquals(other.status, 422);
    await other.body?.cancel();
    assertEquals(h.openai.requests.length, 1);
  }));
