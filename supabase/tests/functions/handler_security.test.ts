/**
 * The security cases that need no database or network, against the handler
 * with in-memory fakes (handler_contract.test.ts's style): hostile JSON,
 * CORS origins, the channels a caller may name, the body-timeout default.
 * The attacks that need the stack (raw HTTP, buckets, rows) are in
 * chat_security_*.test.ts.
 */
import { assert, assertEquals } from "./assert.ts";
import { chatRequest, createFakes, ORG, SERVICE_TOKEN, USER } from "../support/fakes.ts";
import { createAgentChatHandler } from "../../functions/agent-chat/handler.ts";
import { loadConfig } from "../../functions/agent-chat/config.ts";
import { expectError, statusOf } from "../support/contract.ts";

const OUTSIDER_ORG = "33333333-3333-4333-8333-333333333333";

Deno.test("order: the default body read timeout is 10 s", () => {
  const config = loadConfig({
    SUPABASE_URL: "http://127.0.0.1:54321",
    SUPABASE_SERVICE_ROLE_KEY: "sb_secret_x",
    SUPABASE_JWT_SECRET: "x".repeat(40),
    OPENAI_BASE_URL: "http://127.0.0.1:9/v1",
  });
  assertEquals(config.bodyTimeoutMs, 10_000);
  assertEquals(config.ipRefusalLimit, 30);
  assertEquals(config.userChannels, ["app", "web"]);
});

Deno.test("CORS: a configured origin list never reflects an unknown origin", async () => {
  const f = createFakes({ allowedOrigins: "https://app.example,https://web.example" });
  const handle = createAgentChatHandler(f.deps);
  const preflight = (origin: string) =>
    handle(new Request("http://fn.local/agent-chat", { method: "OPTIONS", headers: { origin } }));
  for (const origin of ["https://evil.example", "null", "https://app.example.evil.example"]) {
    const pre = await preflight(origin);
    assertEquals(await statusOf(pre), 204);
    assertEquals(pre.headers.get("access-control-allow-origin"), "https://app.example", origin);
    assertEquals(pre.headers.get("access-control-allow-credentials"), null);
  }
  const ok = await preflight("https://web.example");
  assertEquals(ok.headers.get("access-control-allow-origin"), "https://web.example");
});

Deno.test("JSON: duplicate keys, numbers as strings, nulls and wrong types are handled, never a 500", async () => {
  const f = createFakes({ maxMessageChars: 4000, maxBodyBytes: 32_768 });
  const messages: string[] = [];
  f.deps.model.complete = (sent) => {
    messages.push(sent.at(-1)!.content);
    return Promise.resolve({
      text: "hello",
      model: "gpt-fake",
      usage: { prompt_tokens: 1, completion_tokens: 1, total_tokens: 2, cached_prompt_tokens: 0 },
      unsettledAttempts: 0,
    });
  };
  const handle = createAgentChatHandler(f.deps);
  // Duplicate keys: the last wins everywhere (parse, admission, row), so the
  // org that is checked is the org that is recorded.
  const dup = await handle(chatRequest(
    `{"message":"first","message":"second","org_id":"${OUTSIDER_ORG}","org_id":"${ORG}"}`,
  ));
  assertEquals(dup.status, 200);
  const { request_id } = await dup.json();
  assertEquals(messages, ["second"]);
  assertEquals(f.begins.map((b) => b.p_org_id), [ORG]);
  assertEquals(f.usage.find((u) => u.request_id === request_id)!.org_id, ORG);
  const o = ORG;
  const wrong = [
    `{"message":"hi","org_id":"${o}","stream":"true"}`,
    `{"message":"hi","org_id":"${o}","stream":1}`,
    `{"message":123,"org_id":"${o}"}`,
    `{"message":["hi"],"org_id":"${o}"}`,
    `{"message":"hi","org_id":null}`,
    `{"message":"hi","org_id":"${o}","session_id":null}`,
    `{"message":"hi","org_id":"${o}","metadata":[1,2]}`,
    `{"message":"hi","org_id":"${o}","metadata":"x"}`,
    `{"message":"hi","org_id":"${o}","channel":7}`,
    `{"message":"hi","org_id":"${o}","metadata":{"${"k".repeat(65)}":1}}`,
    `"just a string"`,
    `null`,
    `1e400`,
    ``,
  ];
  for (const text of wrong) {
    await expectError(await handle(chatRequest(text)), 400, "invalid_request");
  }
  assertEquals(f.begins.length, 1, "no refused body reached admission");
  assertEquals(f.usage.filter((u) => u.error_code === "internal_error").length, 0);
});

Deno.test("JSON: __proto__ and constructor keys pollute nothing and are not a 500", async () => {
  const f = createFakes({ maxBodyBytes: 32_768 });
  const handle = createAgentChatHandler(f.deps);
  const top = await handle(
    chatRequest(`{"message":"hi","org_id":"${ORG}","__proto__":{"admin":true}}`),
  );
  await expectError(top, 400, "invalid_request");
  const meta = await handle(chatRequest(
    `{"message":"hi","org_id":"${ORG}","metadata":{"__proto__":{"polluted":"yes"},"constructor":{"prototype":{"polluted":"yes"}},"k":1}}`,
  ));
  const status = meta.status;
  const text = await meta.text();
  assert(status === 200 || status === 400, `status ${status}: ${text}`);
  assertEquals(({} as Record<string, unknown>).polluted, undefined, "Object.prototype untouched");
  assertEquals(({} as Record<string, unknown>).admin, undefined);
  if (status === 200) {
    const row = f.usage.find((u) => u.request_id === JSON.parse(text).request_id)!;
    const client = row.metadata.client as Record<string, unknown>;
    assertEquals(client.k, 1);
    assertEquals(Object.getPrototypeOf(client), Object.prototype);
  }
});

Deno.test("JSON: deeply nested bodies are 400 invalid_request, not 500 internal_error", async () => {
  const f = createFakes({ maxBodyBytes: 32_768 });
  const handle = createAgentChatHandler(f.deps);
  const depth = 8000; // 16 KB of brackets, well under the 32 KB body limit
  const nested = "[".repeat(depth) + "]".repeat(depth);
  for (
    const text of [
      `{"message":"hi","org_id":"${ORG}","metadata":{"a":${nested}}}`,
      `{"message":${nested},"org_id":"${ORG}"}`,
      `{"message":"hi","org_id":"${ORG}","x":${'{"a":'.repeat(4000)}1${"}".repeat(4000)}}`,
    ]
  ) {
    await expectError(await handle(chatRequest(text)), 400, "invalid_request");
  }
  // A 500 counts against the success rate that pages the operators.
  const errors = f.logs.filter((l) => l.event === "request" && l.level === "error");
  assertEquals(errors.length, 0, "no error-level log line from a client's body");
  assertEquals(f.logs.filter((l) => l.event === "request").length, 3);
  // Nesting that fits the metadata limit is stored or refused, never a 500.
  const fits = await handle(chatRequest(
    `{"message":"hi","org_id":"${ORG}","metadata":{"a":${"[".repeat(900)}${"]".repeat(900)}}}`,
  ));
  assert([200, 400].includes(await statusOf(fits)), `status ${fits.status}`);
});

Deno.test("channels: a user token may use only AI_AGENT_USER_CHANNELS; a service caller any valid channel", async () => {
  const f = createFakes();
  const handle = createAgentChatHandler(f.deps);
  for (const channel of [undefined, "app", "web"]) {
    const res = await handle(chatRequest({ message: "hi", org_id: ORG, channel }));
    assertEquals(await statusOf(res), 200, `user on ${channel ?? "default"}`);
  }
  for (const channel of ["whatsapp", "sms", "ussd", "internal"]) {
    const res = await handle(chatRequest({ message: "hi", org_id: ORG, channel }));
    await expectError(res, 403, "forbidden");
  }
  for (const channel of ["whatsapp", "sms", "ussd"]) {
    const body = { message: "hi", org_id: ORG, channel, user_id: USER };
    const res = await handle(chatRequest(body, { token: SERVICE_TOKEN }));
    assertEquals(await statusOf(res), 200, `service on ${channel}`);
  }
  for (const channel of ["SMS", "WhatsApp", "", " app", "app\n", "a".repeat(33)]) {
    const body = { message: "hi", org_id: ORG, channel, user_id: USER };
    await expectError(
      await handle(chatRequest(body, { token: SERVICE_TOKEN })),
      400,
      "invalid_request",
    );
  }
  const answered = f.usage.filter((u) => u.success).map((u) => u.channel).sort();
  assertEquals(answered, ["app", "app", "sms", "ussd", "web", "whatsapp"]);

  const narrow = createFakes({ userChannels: ["app", "ussd"] });
  const handleNarrow = createAgentChatHandler(narrow.deps);
  await expectError(
    await handleNarrow(chatRequest({ message: "hi", org_id: ORG, channel: "web" })),
    403,
    "forbidden",
  );
  const ok = await handleNarrow(chatRequest({ message: "hi", org_id: ORG, channel: "ussd" }));
  assertEquals(await statusOf(ok), 200);
});
