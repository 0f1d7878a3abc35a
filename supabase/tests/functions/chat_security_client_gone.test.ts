/**
 * agent-chat's security controls, attacked end to end: a client that goes away
 * (during the body, before the first event, mid-stream, during a JSON call) is
 * client_closed, one row, never an upstream failure.
 *
 * Waits are bounded polls on an observable (a row, a log line, a recorded
 * upstream request), never a bare sleep that a slow machine could lose.
 */
import { assert, assertEquals } from "./assert.ts";
import { type Harness, type Member } from "../support/function-harness.ts";
import { type AgentChatDeps, createAgentChatHandler } from "../../functions/agent-chat/handler.ts";
import { withHarness } from "../support/test-helpers.ts";
import { rawHttp } from "../support/raw-http.ts";
import {
  type Meta,
  rawHead,
  requestLines,
  rowsOfUser,
  STORES,
  waitFor,
  withGatedUpstream,
} from "../support/attack.ts";

// ---------------------------------------------------------------------------
// 5. A client that goes away is client_closed, one row, never openai_error
// ---------------------------------------------------------------------------

/** Starts a request whose client can be made to go away; waits for its log line after. */
function abortable(h: Harness, m: Member, body: Record<string, unknown>, clientRequestId: string) {
  const controller = new AbortController();
  const response = fetch(h.url, {
    method: "POST",
    signal: controller.signal,
    headers: {
      authorization: `Bearer ${m.token}`,
      "content-type": "application/json",
      "x-forwarded-for": m.ip,
      "x-request-id": clientRequestId,
    },
    body: JSON.stringify(body),
  }).catch(() => undefined);
  return { controller, response };
}

async function closedRows(h: Harness, clientRequestId: string) {
  // The log line is written after the row: once it is there, the row is final.
  const lines = await waitFor(() => requestLines(h, clientRequestId), (l) => l.length > 0, 8000);
  assertEquals(lines.length, 1, "one log line");
  return await h.sql`select * from public.agent_usage_events
    where metadata->>'client_request_id' = ${clientRequestId}`;
}

for (const store of STORES) {
  for (const stream of [false, true]) {
    Deno.test(`client gone (${store}, ${stream ? "before the first SSE event" : "during the JSON call"}): client_closed, one row, upstream dropped`, () =>
      withGatedUpstream(
        1,
        (upstream) =>
          withHarness({ store, env: { OPENAI_BASE_URL: upstream.baseURL } }, async (h) => {
            const m = await h.member();
            const id = `gone-${store}-${stream}-${crypto.randomUUID().slice(0, 8)}`;
            const { controller, response } = abortable(h, m, {
              message: "hi",
              org_id: m.orgId,
              stream,
            }, id);
            await waitFor(() => upstream.requests, (n) => n >= 1);
            controller.abort();
            await response;
            // The upstream answers only once the function has logged the request.
            const rows = await closedRows(h, id);
            upstream.release();
            assertEquals(rows.length, 1);
            assertEquals(rows[0]!.error_code, "client_closed");
            assertEquals((rows[0]!.metadata as Meta).tokens_estimated, true);
            assert(Number(rows[0]!.prompt_tokens) > 0, "the prompt sent upstream is metered");
            // Its answer finds the connection closed: the function dropped the call.
            const dropped = await waitFor(() => upstream.dropped, (n) => n >= 1);
            assertEquals(dropped, 1, "the upstream call was dropped");
          }),
      ));
  }

  Deno.test(`client gone (${store}, mid-stream): client_closed, one row with the streamed text estimated`, () =>
    withHarness({ store }, async (h) => {
      const m = await h.member();
      h.openai.script({ kind: "reply", text: "word ".repeat(300), chunkDelayMs: 25 });
      const id = `midstream-${store}-${crypto.randomUUID().slice(0, 8)}`;
      const { controller, response } = abortable(h, m, {
        message: "go",
        org_id: m.orgId,
        stream: true,
      }, id);
      const res = (await response)!;
      const reader = res.body!.getReader();
      let seen = "";
      while (!/event: delta[\s\S]*event: delta/.test(seen)) {
        const { value, done } = await reader.read();
        if (done) break;
        seen += new TextDecoder().decode(value);
      }
      controller.abort();
      await reader.cancel().catch(() => {});
      const rows = await closedRows(h, id);
      assertEquals(rows.length, 1);
      assertEquals(rows[0]!.error_code, "client_closed");
      assert(Number(rows[0]!.completion_tokens) > 0);
      assertEquals((rows[0]!.metadata as Meta).tokens_estimated, true);
    }));

  for (const stream of [false, true]) {
    Deno.test(`client gone (${store}, ${stream ? "SSE" : "JSON"}, during admission): client_closed, one row, no model call, no tokens billed`, async () => {
      let deps!: AgentChatDeps;
      let gate!: () => void;
      const gated = new Promise<void>((r) => (gate = r));
      let entered!: () => void;
      const inBeginTurn = new Promise<void>((r) => (entered = r));
      await withHarness({
        store,
        adjust: (d) => {
          deps = d;
          const begin = d.db.beginTurn.bind(d.db);
          d.db = {
            ...d.db,
            beginTurn: async (args) => {
              entered();
              await gated;
              return await begin(args);
            },
          };
        },
      }, async (h) => {
        try {
          // The same handler, wrapped only to see when the server notices the client leave.
          const handler = createAgentChatHandler(deps);
          let signal: AbortSignal | undefined;
          h.gateway.setFunction((request, info) => {
            signal = request.signal;
            return handler(request, info);
          });
          const m = await h.member();
          const id = `admission-${store}-${stream}-${crypto.randomUUID().slice(0, 8)}`;
          const { controller, response } = abortable(h, m, {
            message: "hi",
            org_id: m.orgId,
            stream,
          }, id);
          await inBeginTurn;
          controller.abort();
          await response;
          await waitFor(() => signal?.aborted ?? false, (a) => a);
          assert(signal?.aborted, "the server saw the client leave");
          gate(); // the begin-turn call answers only now
          const rows = await closedRows(h, id);
          assertEquals({
            rows: rows.map((r) => r.error_code ?? "ok"),
            modelCalls: h.openai.requests.length,
            billedTokens: rows.map((r) => Number(r.total_tokens ?? 0)),
          }, {
            rows: ["client_closed"],
            modelCalls: 0,
            billedTokens: [0],
          });
        } finally {
          gate();
        }
      });
    });
  }
}

Deno.test("client gone during the body upload: client_closed, not invalid_request", () =>
  withHarness({ env: { AI_AGENT_REFUSAL_LOG_INTERVAL_SECONDS: "3600" } }, async (h) => {
    const m = await h.member();
    const res = await rawHttp(h.gateway.port, [
      rawHead({
        token: m.token,
        ip: m.ip,
        contentLength: 400,
        extra: { "x-request-id": "upload-gone-0001" },
      }),
      `{"message":"half a bo`,
      { delayMs: 100 },
      { close: true },
    ], 3000);
    assertEquals(res, undefined);
    const lines = await waitFor(
      () => requestLines(h, "upload-gone-0001"),
      (l) => l.length > 0,
      5000,
    );
    assertEquals(lines.length, 1);
    assertEquals(lines[0]!.fields.code, "client_closed");
    const rows = await rowsOfUser(h.sql, m.userId);
    assertEquals(rows.map((r) => r.error_code), ["client_closed"]);
  }));
