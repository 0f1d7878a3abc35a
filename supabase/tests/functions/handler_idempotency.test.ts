/**
 * Idempotency-Key against the handler with in-memory fakes: the key rules
 * (400), what the begin-turn call is sent, the replay (JSON and SSE, no
 * model call, counted like a refusal), 409/422, and how each outcome of an attempt settles
 * its key in the usage row (complete with the answer, or release).
 */
import { assert, assertEquals, assertMatch } from "./assert.ts";
import { parseSse } from "../support/sse.ts";
import { chatRequest, createFakes, ORG, SERVICE_TOKEN, USER } from "../support/fakes.ts";
import { createAgentChatHandler } from "../../functions/agent-chat/handler.ts";
import { parseIdempotencyKey, requestHash } from "../../functions/agent-chat/idempotency.ts";
import { ModelError } from "../../functions/agent-chat/model.ts";
import type { ChatRequest } from "../../functions/agent-chat/request.ts";
import { createUsageLogger } from "../../functions/agent-chat/usage.ts";
import type { StoredAnswer, UsageEvent } from "../../functions/agent-chat/turn.ts";
import { expectError } from "../support/contract.ts";

const hi = { message: "hi", org_id: ORG };
const keyed = (key: string) => ({ headers: { "idempotency-key": key } });
const STORED: StoredAnswer = {
  session_id: "33333333-3333-4333-8333-333333333333",
  message: "the first answer",
  usage: { prompt_tokens: 11, completion_tokens: 7, total_tokens: 18 },
  model: "gpt-fake",
  request_id: "first-request-id",
};

Deno.test("key rules: 1-255 printable ASCII, bare or as a quoted sf-string; anything else is 400", async () => {
  const parse = (value: string) => parseIdempotencyKey(new Headers({ "idempotency-key": value }));
  assertEquals(parseIdempotencyKey(new Headers()), undefined);
  assertEquals(parse("abc-123"), "abc-123");
  assertEquals(
    parse('"8e03978e-40d5-43e8-bc93-6894a57f9324"'),
    "8e03978e-40d5-43e8-bc93-6894a57f9324",
  );
  assertEquals(parse('"a \\"quoted\\" \\\\ key"'), 'a "quoted" \\ key');
  assertEquals(parse("k".repeat(255))?.length, 255);
  const f = createFakes();
  const handle = createAgentChatHandler(f.deps);
  for (
    const bad of [
      "",
      "   ",
      "k".repeat(256),
      "caf\u00e9",
      '""',
      '"open',
      '"a"b"',
      '"a\\b"',
      '"trailing\\"',
    ]
  ) {
    const body = await expectError(
      await handle(chatRequest(hi, keyed(bad))),
      400,
      "invalid_request",
    );
    assertMatch(body.error.message, /Idempotency-Key/);
  }
  assertEquals(f.begins.length + f.modelCalls, 0, "nothing charged, no model call");
});

Deno.test("begin turn: no key sends no idempotency arguments; a key sends key, body hash and request id", async () => {
  const f = createFakes();
  const handle = createAgentChatHandler(f.deps);
  await (await handle(chatRequest(hi))).body?.cancel();
  assertEquals("p_idempotency_key" in f.begins[0]!, false);
  const res = await handle(chatRequest(hi, keyed('"retry-1"')));
  await res.body?.cancel();
  const args = f.begins[1]!;
  assertEquals(args.p_idempotency_key, "retry-1");
  assertMatch(args.p_request_hash!, /^[0-9a-f]{64}$/);
  assertEquals(args.p_request_id, res.headers.get("x-request-id"));
  assertEquals(args.p_user_id, USER);
});

Deno.test("request hash: the fields that define the turn; not stream, not metadata key order", async () => {
  const base: ChatRequest = {
    message: "hi",
    orgId: ORG,
    sessionId: undefined,
    channel: "app",
    stream: false,
    metadata: { a: 1, b: { c: [1, 2], d: "x" } },
    userId: undefined,
    clientIp: undefined,
  };
  const h = await requestHash(base);
  assertEquals(await requestHash({ ...base, stream: true }), h);
  assertEquals(await requestHash({ ...base, clientIp: "203.0.113.1" }), h);
  assertEquals(await requestHash({ ...base, metadata: { b: { d: "x", c: [1, 2] }, a: 1 } }), h);
  for (
    const changed of [
      { message: "hi!" },
      { orgId: USER },
      { sessionId: USER },
      { channel: "web" },
      { metadata: undefined },
      { metadata: { a: 2, b: { c: [1, 2], d: "x" } } },
      { metadata: { a: 1, b: { c: [2, 1], d: "x" } } },
    ]
  ) {
    assert(await requestHash({ ...base, ...changed }) !== h, JSON.stringify(changed));
  }
});

Deno.test("replay (JSON): the stored body, idempotent-replayed, no model call, counted like a refusal", async () => {
  const f = createFakes();
  f.begin = () => Promise.resolve({ outcome: "replay", response: STORED });
  const res = await createAgentChatHandler(f.deps)(chatRequest(hi, keyed("k1")));
  assertEquals(res.status, 200);
  assertEquals(await res.json(), STORED);
  assertEquals(res.headers.get("idempotent-replayed"), "true");
  assert(res.headers.get("x-request-id") !== STORED.request_id, "the header is this request's id");
  assertEquals(res.headers.get("ratelimit-remaining"), null, "no bucket was consulted");
  assertEquals([f.modelCalls, f.saved.length], [0, 0]);
  assertEquals(f.usage.length, 1, "the first replay of the interval is a row");
  assertEquals([f.usage[0]!.total_tokens, f.usage[0]!.metadata.replayed], [null, true]);
  const line = f.logs.find((l) => l.event === "request")!;
  assertEquals([line.fields.status, line.fields.idempotent_replayed], [200, true]);
});

Deno.test("replay (SSE): session, the whole answer as one delta, done", async () => {
  const f = createFakes();
  f.begin = () => Promise.resolve({ outcome: "replay", response: STORED });
  const res = await createAgentChatHandler(f.deps)(
    chatRequest({ ...hi, stream: true }, keyed("k1")),
  );
  assertEquals(res.headers.get("content-type"), "text/event-stream; charset=utf-8");
  assertEquals(res.headers.get("idempotent-replayed"), "true");
  const events = parseSse(await res.text());
  assertEquals(events.map((e) => e.event), ["session", "delta", "done"]);
  assertEquals(events[0]!.data, { session_id: STORED.session_id, request_id: STORED.request_id });
  assertEquals(events[1]!.data, { text: STORED.message });
  const { message: _, ...done } = STORED;
  assertEquals(events[2]!.data, done);
  assertEquals([f.modelCalls, f.usage.length], [0, 1]);
});

Deno.test("422 idempotency_mismatch and 409 request_in_progress with Retry-After; no model call", async () => {
  const f = createFakes();
  const handle = createAgentChatHandler(f.deps);
  f.begin = () => Promise.resolve({ outcome: "idempotency_mismatch" });
  await expectError(await handle(chatRequest(hi, keyed("k1"))), 422, "idempotency_mismatch");
  f.begin = () =>
    Promise.resolve({ outcome: "request_in_progress", retry_after_seconds: 1, request_id: "r-1" });
  const res = await handle(chatRequest(hi, keyed("k1")));
  assertEquals(res.headers.get("retry-after"), "1");
  await expectError(res, 409, "request_in_progress");
  assertEquals(f.modelCalls, 0);
  assertEquals(f.usage.map((u) => u.error_code), ["idempotency_mismatch", "request_in_progress"]);
  assertEquals(f.usage.map((u) => u.idempotency), [undefined, undefined], "they hold no key");
  assertEquals(f.usage[1]!.error_message, "Idempotency-Key held by request r-1");
});

Deno.test("settlement: an answered turn completes its key with the JSON body it sent", async () => {
  for (const stream of [false, true]) {
    const f = createFakes();
    const res = await createAgentChatHandler(f.deps)(chatRequest({ ...hi, stream }, keyed("k1")));
    const text = await res.text();
    const sent = stream ? parseSse(text).at(-1)!.data : JSON.parse(text);
    assertEquals(f.usage.length, 1);
    const settled = f.usage[0]!.idempotency!;
    assertEquals([settled.key, settled.outcome, settled.ttl_seconds], ["k1", "complete", 3600]);
    assertEquals(settled.response!.message, "hello");
    const { message: _, ...rest } = settled.response!;
    assertEquals(stream ? rest : settled.response, sent, "the stored answer is what was sent");
  }
});

Deno.test("settlement: model failure, save failure, a cut stream and a client gone release the key", async () => {
  const outcomes: Array<[string, (f: ReturnType<typeof createFakes>) => void, boolean]> = [
    ["model failure", (f) => f.complete = () => Promise.reject(new ModelError("boom", 500)), false],
    [
      "session taken",
      (f) => f.append = () => Promise.resolve({ owned: false, usageLogged: false }),
      false,
    ],
    ["stream cut", (f) =>
      f.stream = async function* () {
        yield { type: "delta", text: "par" };
        throw new ModelError("cut");
      }, true],
  ];
  for (const [name, script, stream] of outcomes) {
    const f = createFakes();
    script(f);
    const res = await createAgentChatHandler(f.deps)(chatRequest({ ...hi, stream }, keyed("k1")));
    await res.text();
    assertEquals(f.usage.length, 1, name);
    assertEquals(f.usage[0]!.idempotency, { key: "k1", outcome: "release" }, name);
  }
  const f = createFakes();
  const client = new AbortController();
  f.complete = (signal) =>
    new Promise((_, reject) => {
      signal.addEventListener("abort", () => reject(new Error("aborted")));
      client.abort();
    });
  const request = new Request(chatRequest(hi, keyed("k1")), { signal: client.signal });
  assertEquals((await createAgentChatHandler(f.deps)(request)).status, 499);
  assertEquals(f.usage[0]!.error_code, "client_closed");
  assertEquals(f.usage[0]!.idempotency, { key: "k1", outcome: "release" });
});

Deno.test("settlement: a service caller's key belongs to the asserted user", async () => {
  const f = createFakes();
  const other = "44444444-4444-4444-8444-444444444444";
  const res = await createAgentChatHandler(f.deps)(
    chatRequest({ ...hi, user_id: other, channel: "whatsapp" }, {
      token: SERVICE_TOKEN,
      headers: { "idempotency-key": "wa-msg-1" },
    }),
  );
  await res.body?.cancel();
  assertEquals(f.begins[0]!.p_user_id, other);
  assertEquals(f.usage[0]!.user_id, other);
  assertEquals(f.usage[0]!.idempotency!.outcome, "complete");
});

Deno.test("usage log off: every event is settled without a row, through agent_settle_usage", async () => {
  const calls: string[] = [];
  const logger = createUsageLogger({
    enabled: false,
    db: {
      logUsage: () => Promise.resolve(void calls.push("log")),
      settleUsage: () => Promise.resolve(void calls.push("settle")),
    },
    log: () => {},
    extendLifetime: undefined,
  });
  const event = { request_id: "r", metadata: {} } as unknown as UsageEvent;
  await logger.record(event);
  await logger.record({ ...event, idempotency: { key: "k", outcome: "release" } });
  assertEquals(calls, ["settle", "settle"], "counters and keys are settled, no row is logged");
});
