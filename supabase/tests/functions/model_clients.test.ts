/**
 * Both model clients of non-streaming calls (AI_AGENT_OPENAI_CLIENT=fetch,
 * the default, and sdk) keep one contract: the same request to the upstream,
 * the same statuses and error detail, the same retries, the same metering.
 */
import { assert, assertEquals, assertMatch } from "./assert.ts";
import { type Harness, startHarness } from "../support/function-harness.ts";

async function withClient(
  client: string,
  env: Record<string, string>,
  fn: (h: Harness) => Promise<void>,
) {
  const h = await startHarness({ env: { AI_AGENT_OPENAI_CLIENT: client, ...env } });
  try {
    await fn(h);
  } finally {
    await h.stop();
  }
}

for (const client of ["fetch", "sdk"]) {
  Deno.test(`model client ${client}: the request the upstream sees, and the answer`, () =>
    withClient(client, {}, async (h) => {
      const m = await h.member();
      h.openai.script({ kind: "reply", text: "hello back" });
      const res = await h.call({ message: "hello", org_id: m.orgId }, { token: m.token });
      const body = await res.json();
      assertEquals(res.status, 200, JSON.stringify(body));
      assertEquals(body.message, "hello back");
      const sent = h.openai.requests.at(-1)!;
      assertMatch(sent.authorization ?? "", /^Bearer \S+/);
      assertEquals(sent.body.messages.at(-1), { role: "user", content: "hello" });
      assertEquals(sent.body.messages[0]!.role, "system");
      assert(sent.body.max_completion_tokens! > 0);
      assert(!sent.body.stream, "not a stream");
      const [row] = await h.usageRows(body.request_id);
      assertEquals(Number(row!.total_tokens), body.usage.total_tokens);
    }));

  for (
    const [status, detail] of [
      [500, /openai 500/],
      [401, /openai 401/],
      [400, /openai 400/],
    ] as const
  ) {
    Deno.test(`model client ${client}: upstream ${status} is 502 openai_error, detail in the row only`, () =>
      withClient(client, { AI_AGENT_OPENAI_MAX_RETRIES: "0" }, async (h) => {
        const m = await h.member();
        h.openai.script({ kind: "error", status, message: "upstream says no" });
        const res = await h.call({ message: "hi", org_id: m.orgId }, { token: m.token });
        const body = await res.json();
        assertEquals([res.status, body.error.code], [502, "openai_error"]);
        assert(!JSON.stringify(body).includes("upstream says no"), "no upstream text to clients");
        const [row] = await h.usageRows(res.headers.get("x-request-id")!);
        assertMatch(String(row!.error_message), detail);
      }));
  }

  Deno.test(`model client ${client}: a 429 is retried, then answered`, () =>
    withClient(client, { AI_AGENT_OPENAI_MAX_RETRIES: "1" }, async (h) => {
      const m = await h.member();
      h.openai.script({ kind: "error", status: 429 }, { kind: "reply", text: "second time" });
      const res = await h.call({ message: "hi", org_id: m.orgId }, { token: m.token });
      assertEquals(res.status, 200);
      assertEquals((await res.json()).message, "second time");
      assertEquals(h.openai.requests.length, 2);
    }));

  Deno.test(`model client ${client}: a timed-out attempt is retried and its prompt metered`, () =>
    withClient(
      client,
      { AI_AGENT_OPENAI_MAX_RETRIES: "1", AI_AGENT_OPENAI_TIMEOUT_MS: "1000" },
      async (h) => {
        const m = await h.member();
        h.openai.script({ kind: "reply", text: "too late", latencyMs: 2500 }, {
          kind: "reply",
          text: "late but here",
        });
        const res = await h.call({ message: "hi", org_id: m.orgId }, { token: m.token });
        const body = await res.json();
        assertEquals(res.status, 200, JSON.stringify(body));
        const [row] = await h.usageRows(body.request_id);
        assertEquals(Number(row!.prompt_tokens), 2 * body.usage.prompt_tokens);
        const attempts = (row!.metadata as { model_attempts: Array<Record<string, unknown>> })
          .model_attempts;
        assertEquals(attempts.length, 1);
        assertEquals([attempts[0]!.outcome, attempts[0]!.unsettled_tries], ["answered", 1]);
      },
    ));

  Deno.test(`model client ${client}: a malformed answer is 502, never a 500`, () =>
    withClient(client, { AI_AGENT_OPENAI_MAX_RETRIES: "0" }, async (h) => {
      const m = await h.member();
      h.openai.script({ kind: "malformed" });
      const res = await h.call({ message: "hi", org_id: m.orgId }, { token: m.token });
      assertEquals([res.status, (await res.json()).error.code], [502, "openai_error"]);
    }));
}
