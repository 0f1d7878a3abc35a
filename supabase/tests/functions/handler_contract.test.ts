/**
 * The whole error contract of ../shared/DESIGN.md against the handler with
 * in-memory fakes (no database, no network): every status, its headers and
 * the usage rows each outcome leaves. Milliseconds per case.
 */
import { assert, assertEquals, assertMatch } from "./assert.ts";
import { parseSse } from "../support/sse.ts";
import {
  ALLOWED,
  answerOf,
  chatRequest,
  createFakes,
  ORG,
  SERVICE_TOKEN,
  USER,
} from "../support/fakes.ts";
import { createAgentChatHandler } from "../../functions/agent-chat/handler.ts";
import { ModelError } from "../../functions/agent-chat/model.ts";
import { expectError } from "../support/contract.ts";

const hi = { message: "hi", org_id: ORG };

Deno.test("200: JSON answer with RateLimit headers, one success row, the turn saved", async () => {
  const f = createFakes();
  const res = await createAgentChatHandler(f.deps)(chatRequest(hi));
  const body = await res.json();
  assertEquals(res.status, 200);
  assertEquals(body.message, "hello");
  assertEquals(body.usage.total_tokens, 18);
  assertEquals(res.headers.get("ratelimit-remaining"), "9");
  assertEquals(f.usage.length, 1);
  assertEquals(f.usage[0]!.success, true);
  assertEquals(f.usage[0]!.total_tokens, 18);
  assertEquals(f.usage[0]!.org_id, ORG);
  assertEquals(f.saved.length, 1);
  assertEquals(f.logs.filter((l) => l.event === "request").length, 1);
});

Deno.test("request ids: always the server's; a client's is echoed and kept in metadata", async () => {
  const f = createFakes();
  const handle = createAgentChatHandler(f.deps);
  const ids = new Set<string>();
  for (let i = 0; i < 2; i++) {
    const res = await handle(chatRequest(hi, { headers: { "x-request-id": "client-id-0001" } }));
    await res.body?.cancel();
    ids.add(res.headers.get("x-request-id")!);
    assertEquals(res.headers.get("x-client-request-id"), "client-id-0001");
  }
  assertEquals(ids.size, 2);
  assert(!ids.has("client-id-0001"));
  assertEquals(f.usage.map((u) => u.metadata.client_request_id), [
    "client-id-0001",
    "client-id-0001",
  ]);
  assertEquals(new Set(f.usage.map((u) => u.request_id)), ids);
});

Deno.test("204 preflight with the SDK's CORS headers, 405 for other methods", async () => {
  const f = createFakes();
  const handle = createAgentChatHandler(f.deps);
  const pre = await handle(new Request("http://fn.local/", { method: "OPTIONS" }));
  assertEquals(pre.status, 204);
  assertMatch(pre.headers.get("access-control-allow-headers")!, /x-client-info.*traceparent/);
  assertMatch(pre.headers.get("access-control-allow-headers")!, /idempotency-key/);
  assertMatch(pre.headers.get("access-control-expose-headers")!, /retry-after/);
  const res = await handle(new Request("http://fn.local/", { method: "GET" }));
  await expectError(res, 405, "method_not_allowed");
  assertEquals(res.headers.get("allow"), "POST, OPTIONS");
  assertEquals(f.usage.length, 0, "an anonymous refusal writes no row of its own");
});

Deno.test("401: anonymous refusals write no row each, only one aggregated row per interval", async () => {
  const f = createFakes();
  const handle = createAgentChatHandler(f.deps);
  for (let i = 0; i < 5; i++) {
    await expectError(
      await handle(chatRequest(hi, { token: null, ip: `198.51.100.${i}` })),
      401,
      "unauthorized",
    );
  }
  await expectError(await handle(chatRequest(hi, { token: "forged" })), 401, "unauthorized");
  assertEquals(f.usage.length, 0);
  assertEquals(f.begins.length, 0);
  await f.deps.refusals.flush();
  assertEquals(f.usage.length, 1);
  const row = f.usage[0]!;
  assertEquals([row.org_id, row.error_code, row.event_count], [null, "anonymous_refusals", 6]);
  assertEquals(row.metadata.by_code, { unauthorized: 6 });
  assertEquals((row.metadata.top_ips as unknown[]).length, 6);
});

Deno.test("429 before any work: an address over its anonymous-refusal limit", async () => {
  const f = createFakes({}, 3);
  const handle = createAgentChatHandler(f.deps);
  for (let i = 0; i < 3; i++) {
    await expectError(await handle(chatRequest(hi, { token: null })), 401, "unauthorized");
  }
  // Even valid credentials from that address wait for the interval to end.
  const res = await handle(chatRequest(hi));
  await expectError(res, 429, "rate_limit");
  assertEquals(res.headers.get("retry-after"), "60");
  assertEquals(f.begins.length, 0);
  const other = await handle(chatRequest(hi, { ip: "203.0.113.99" }));
  assertEquals(other.status, 200);
  await other.body?.cancel();
});

Deno.test("400 after authentication: the first refusal is a row, repeats are one aggregated row", async () => {
  const f = createFakes();
  const handle = createAgentChatHandler(f.deps);
  const bodies = [
    "{not json",
    "[1]",
    { message: " ", org_id: ORG },
    { message: "hi", org_id: "nope" },
    { message: "hi", org_id: ORG, extra: 1 },
    `{"message":"\\ud800","org_id":"${ORG}"}`,
    `{"message":"hi","org_id":"${ORG}","metadata":{"\\udfff":"x"}}`,
    `{"message":"hi","org_id":"${ORG}","metadata":{"k":{"n":"\\udbff"}}}`,
    { message: "hi", org_id: ORG, metadata: { k: "a\u0000b" } },
  ];
  for (const body of bodies) {
    await expectError(await handle(chatRequest(body)), 400, "invalid_request");
  }
  assertEquals(f.modelCalls + f.begins.length, 0, "nothing charged, no model call");
  assertEquals(f.usage.length, 1);
  assertEquals(f.usage[0]!.user_id, USER);
  await f.deps.refusals.flush();
  assertEquals(f.usage.map((u) => u.event_count), [1, bodies.length - 1]);
  assertEquals(f.usage[1]!.metadata.aggregated, true);
});

Deno.test("408: a body that does not arrive within the read timeout", async () => {
  const f = createFakes();
  const slow = new ReadableStream<Uint8Array>({
    start(c) {
      c.enqueue(new TextEncoder().encode('{"message":'));
    },
  });
  const res = await createAgentChatHandler(f.deps)(
    new Request("http://fn.local/", {
      method: "POST",
      headers: { authorization: "Bearer user-token" },
      body: slow,
    }),
  );
  await expectError(res, 408, "invalid_request");
  assertEquals(f.begins.length, 0);
});

Deno.test("403 forbidden: user tokens cannot assert a user, an IP or a server-side channel", async () => {
  const f = createFakes();
  const handle = createAgentChatHandler(f.deps);
  for (
    const body of [
      { ...hi, user_id: crypto.randomUUID() },
      { ...hi, client_ip: "1.2.3.4" },
      { ...hi, channel: "whatsapp" },
      { ...hi, channel: "wa" },
    ]
  ) await expectError(await handle(chatRequest(body)), 403, "forbidden");
  assertEquals(f.begins.length, 0);
  // A server-side caller asserts any valid channel, the user and the IP.
  const res = await handle(
    chatRequest({ ...hi, channel: "whatsapp", user_id: USER, client_ip: "1.2.3.4" }, {
      token: SERVICE_TOKEN,
    }),
  );
  assertEquals(res.status, 200);
  await res.body?.cancel();
  assertEquals(f.begins.at(-1)!.p_channel, "whatsapp");
  assertEquals(f.begins.at(-1)!.p_client_ip, "1.2.3.4");
});

Deno.test("403/404 from the begin-turn decision; a non-member's row does not name the org", async () => {
  const f = createFakes();
  const handle = createAgentChatHandler(f.deps);
  f.begin = () => Promise.resolve({ outcome: "forbidden", rate_limit: ALLOWED });
  await expectError(await handle(chatRequest(hi)), 403, "forbidden");
  assertEquals(f.usage[0]!.org_id, null);
  assertEquals(f.usage[0]!.metadata.requested_org_id, ORG);
  f.begin = () =>
    Promise.resolve({ outcome: "opt_out", opt_out_scope: "user", opt_out_channel: null });
  await expectError(await handle(chatRequest(hi)), 403, "opt_out");
  f.begin = () => Promise.resolve({ outcome: "session_not_found" });
  await expectError(
    await handle(chatRequest({ ...hi, session_id: crypto.randomUUID() })),
    404,
    "session_not_found",
  );
  // A store that knows the session is someone else's says so in the begin-turn
  // call, which refuses it in its order (membership, opt-outs, session) and charges it.
  f.owned = false;
  await expectError(
    await handle(chatRequest({ ...hi, session_id: crypto.randomUUID() })),
    404,
    "session_not_found",
  );
  assertEquals(f.begins.at(-1)!.p_session_owned, false);
  assertEquals(f.modelCalls, 0);
});

Deno.test("429: names the refusing scope, Retry-After and RateLimit headers; repeats aggregate", async () => {
  const f = createFakes();
  const handle = createAgentChatHandler(f.deps);
  f.begin = () =>
    Promise.resolve({
      outcome: "rate_limit",
      rate_limit: { ...ALLOWED, allowed: false, remaining: 0, retry_after_seconds: 7 },
    });
  for (let i = 0; i < 3; i++) {
    const res = await handle(chatRequest(hi));
    const body = await expectError(res, 429, "rate_limit");
    assertMatch(body.error.message, /user/);
    assertEquals(res.headers.get("retry-after"), "7");
    assertEquals(res.headers.get("ratelimit"), '"user";r=0;t=60');
  }
  assertEquals(f.usage.length, 1);
  assertEquals((f.usage[0]!.metadata.rate_limit as { scope: string }).scope, "user");
  await f.deps.refusals.flush();
  assertEquals(f.usage.map((u) => u.event_count), [1, 2]);
});

Deno.test("502 openai_error: detail in the row and the log line, never to the client", async () => {
  const f = createFakes();
  f.complete = () => Promise.reject(new ModelError("openai 500: secret upstream detail", 500));
  const res = await createAgentChatHandler(f.deps)(chatRequest(hi));
  const body = await expectError(res, 502, "openai_error");
  assert(!JSON.stringify(body).includes("secret"));
  assertMatch(f.usage[0]!.error_message!, /secret upstream detail/);
  const line = f.logs.find((l) => l.event === "request")!;
  assertEquals([line.fields.status, line.fields.code], [502, "openai_error"]);
  assertMatch(String(line.fields.detail), /secret upstream detail/);
  assertEquals(f.saved.length, 0);
});

Deno.test("503 session_store_error: before the model, nothing billed; after it, the tokens are metered", async () => {
  const f = createFakes();
  const handle = createAgentChatHandler(f.deps);
  f.begin = () => Promise.reject(new Error("connection refused 127.0.0.1:5432"));
  const body = await expectError(await handle(chatRequest(hi)), 503, "session_store_error");
  assert(!JSON.stringify(body).includes("127.0.0.1"));
  assertEquals(f.modelCalls, 0);
  f.begin = () =>
    Promise.resolve({ outcome: "ok", rate_limit: ALLOWED, session_exists: false, history: [] });
  f.append = () => Promise.reject(new Error("save failed"));
  const usage = f.usage.length;
  await expectError(await handle(chatRequest(hi)), 503, "session_store_error");
  const row = f.usage[usage]!;
  assertEquals([row.error_code, row.total_tokens, row.success], ["session_store_error", 18, false]);
  // An ownership race at save time is a 404 and still metered.
  f.append = () => Promise.resolve({ owned: false, usageLogged: false });
  await expectError(await handle(chatRequest(hi)), 404, "session_not_found");
  assertEquals(f.usage.at(-1)!.total_tokens, 18);
});

Deno.test("500 internal_error: an unexpected failure, no stack trace", async () => {
  const f = createFakes();
  f.begin = () => Promise.resolve({ outcome: "surprise" } as never);
  await expectError(await createAgentChatHandler(f.deps)(chatRequest(hi)), 500, "internal_error");
});

Deno.test("SSE: session, deltas, done; one success row written before done", async () => {
  const f = createFakes();
  const res = await createAgentChatHandler(f.deps)(chatRequest({ ...hi, stream: true }));
  assertEquals(res.headers.get("content-type"), "text/event-stream; charset=utf-8");
  const events = parseSse(await res.text());
  assertEquals(events.map((e) => e.event), ["session", "delta", "delta", "done"]);
  assertEquals(events[3]!.data.usage.total_tokens, 18);
  assertEquals(f.usage.length, 1);
  assertEquals(f.usage[0]!.success, true);
});

Deno.test("SSE: an upstream cut midway ends with an error event; estimated tokens are metered", async () => {
  const f = createFakes();
  f.stream = async function* () {
    yield { type: "delta", text: "a partial answer" };
    throw new ModelError("openai stream ended before the answer finished");
  };
  const res = await createAgentChatHandler(f.deps)(chatRequest({ ...hi, stream: true }));
  const events = parseSse(await res.text());
  assertEquals(events.at(-1)!.event, "error");
  assertEquals(events.at(-1)!.data.error.code, "openai_error");
  assertEquals(f.usage.length, 1);
  assertEquals(f.usage[0]!.metadata.tokens_estimated, true);
  assert(f.usage[0]!.completion_tokens! > 0 && f.usage[0]!.prompt_tokens! > 0);
  assertEquals(f.saved.length, 0);
});

Deno.test("client gone mid-stream: client_closed, exactly one row, the upstream aborted", async () => {
  const f = createFakes();
  let aborted = false;
  f.stream = async function* (signal: AbortSignal) {
    signal.addEventListener("abort", () => aborted = true);
    yield { type: "delta", text: "one" };
    await new Promise((_, reject) =>
      signal.addEventListener("abort", () => reject(new Error("aborted")))
    );
  };
  const res = await createAgentChatHandler(f.deps)(chatRequest({ ...hi, stream: true }));
  const reader = res.body!.getReader();
  await reader.read();
  await reader.cancel();
  for (let i = 0; i < 100 && f.usage.length === 0; i++) await new Promise((r) => setTimeout(r, 5));
  assert(aborted);
  assertEquals(f.usage.length, 1);
  assertEquals(f.usage[0]!.error_code, "client_closed");
  assertEquals(f.usage[0]!.metadata.tokens_estimated, true);
});

Deno.test("client gone before the first event or during a JSON call: client_closed, never openai_error", async () => {
  for (const stream of [true, false]) {
    const f = createFakes();
    const client = new AbortController();
    const waitForAbort = (signal: AbortSignal) =>
      new Promise<never>((_, reject) => {
        if (signal.aborted) reject(new Error("aborted"));
        signal.addEventListener("abort", () => reject(new Error("aborted")));
      });
    f.complete = (signal) => (client.abort(), waitForAbort(signal));
    f.stream = async function* (signal: AbortSignal) {
      client.abort();
      await waitForAbort(signal);
      yield { type: "done", answer: answerOf("never") };
    };
    const request = new Request(chatRequest({ ...hi, stream }), { signal: client.signal });
    const res = await createAgentChatHandler(f.deps)(request);
    assertEquals(res.status, 499);
    assertEquals(f.usage.length, 1, `stream=${stream}`);
    assertEquals(f.usage[0]!.error_code, "client_closed");
    assertEquals(f.usage[0]!.metadata.tokens_estimated, true);
  }
});
