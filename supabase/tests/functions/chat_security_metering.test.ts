/**
 * agent-chat's security controls, attacked end to end: unstorable text is
 * refused before any bucket or model call, and every model call is metered
 * exactly once (cut streams, failed saves, retried attempts, no usage).
 *
 * Waits are bounded polls on an observable (a row, a log line, a recorded
 * upstream request), never a bare sleep that a slow machine could lose.
 */
import { assert, assertEquals } from "./assert.ts";
import { parseSse } from "../support/sse.ts";
import { expectError, statusOf, withHarness } from "../support/test-helpers.ts";
import { concat } from "../support/raw-http.ts";
import { completionResponse } from "../support/completion.ts";
import {
  bucket,
  type Meta,
  requestLines,
  rowsOfUser,
  STORES,
  utf8,
  waitFor,
  withGatedUpstream,
} from "../support/attack.ts";

// ---------------------------------------------------------------------------
// 4. Every model call metered exactly once; unstorable text refused first
// ---------------------------------------------------------------------------

Deno.test("unstorable text: lone surrogates or NUL anywhere are 400 before any bucket or model call", () =>
  withHarness({ env: { AI_AGENT_REFUSAL_LOG_INTERVAL_SECONDS: "3600" } }, async (h) => {
    const m = await h.member();
    const o = m.orgId;
    const cases = [
      `{"message":"\\ud800","org_id":"${o}"}`,
      `{"message":"ok \\udfff tail","org_id":"${o}"}`,
      `{"message":"reversed \\udc00\\ud800","org_id":"${o}"}`,
      `{"message":"hi","org_id":"${o}","metadata":{"\\ud83d":"v"}}`,
      `{"message":"hi","org_id":"${o}","metadata":{"k":"\\ud800"}}`,
      `{"message":"hi","org_id":"${o}","metadata":{"k":[1,{"deep":["\\udbff"]}]}}`,
      `{"message":"hi","org_id":"${o}","channel":"\\ud800"}`,
      `{"message":"hi","org_id":"${o}","channel":"app\\ud800"}`,
      `{"message":"hi","org_id":"${o}","session_id":"\\ud800"}`,
      `{"message":"nul \\u0000 here","org_id":"${o}"}`,
      `{"message":"hi","org_id":"${o}","metadata":{"a\\u0000b":1}}`,
      `{"message":"hi","org_id":"${o}","\\ud800":1}`,
    ];
    for (const text of cases) {
      await expectError(await h.call(text, { token: m.token, ip: m.ip }), 400, "invalid_request");
    }
    // A server-side caller is held to the same rule.
    await expectError(
      await h.call(`{"message":"\\ud800","org_id":"${o}","user_id":"${m.userId}"}`, {
        token: h.secretKey,
      }),
      400,
      "invalid_request",
    );
    assertEquals(h.openai.requests.length, 0, "no model call");
    assertEquals(await bucket(h.sql, `user:${m.userId}`), 0, "no bucket charged");
    const rows = await rowsOfUser(h.sql, m.userId);
    assertEquals(rows.map((r) => r.error_code), ["invalid_request"]);
  }));

Deno.test("raw bytes: invalid UTF-8, overlong and CESU-8 encodings are 400; a BOM is never a 500", () =>
  withHarness({}, async (h) => {
    const m = await h.member();
    const head = `{"message":"`;
    const tail = `","org_id":"${m.orgId}"}`;
    const bodies: Array<[string, number[]]> = [
      ["0xFF byte", [0xff]],
      ["overlong '/'", [0xc0, 0xaf]],
      ["overlong NUL", [0xc0, 0x80]],
      ["CESU-8 surrogate", [0xed, 0xa0, 0x80]],
      ["truncated sequence", [0xe2, 0x82]],
      ["code point above U+10FFFF", [0xf4, 0x90, 0x80, 0x80]],
    ];
    for (const [name, bytes] of bodies) {
      const body = concat([utf8.encode(head), new Uint8Array(bytes), utf8.encode(tail)]);
      const res = await fetch(h.url, {
        method: "POST",
        headers: {
          authorization: `Bearer ${m.token}`,
          "content-type": "application/json",
          "x-forwarded-for": m.ip,
        },
        body,
      });
      const err = await expectError(res, 400, "invalid_request");
      assert(err.error.message.length < 300, name);
    }
    const bom = await fetch(h.url, {
      method: "POST",
      headers: { authorization: `Bearer ${m.token}`, "x-forwarded-for": m.ip },
      body: concat([new Uint8Array([0xef, 0xbb, 0xbf]), utf8.encode(head + "hi" + tail)]),
    });
    assert([200, 400].includes(await statusOf(bom)), `BOM: ${bom.status}`);
    assertEquals(h.openai.requests.length, bom.status === 200 ? 1 : 0);
  }));

for (const store of STORES) {
  for (const stream of [false, true]) {
    Deno.test(`metering (${store}, ${stream ? "SSE" : "JSON"}): the session taken over while the model answers: 404, one row with the reported tokens`, () =>
      withGatedUpstream(
        1,
        (upstream) =>
          withHarness({ store, env: { OPENAI_BASE_URL: upstream.baseURL } }, async (h) => {
            const a = await h.member();
            const b = await h.member(a.orgId);
            const session = crypto.randomUUID();
            const pending = h.call({
              message: "first",
              org_id: a.orgId,
              session_id: session,
              stream,
            }, {
              token: a.token,
              headers: { "x-request-id": "metering-race-a-0001" },
            });
            await waitFor(() => upstream.requests, (n) => n >= 1);
            // B claims the session id while A's model call is held upstream.
            const taken = await h.call({
              message: "mine now",
              org_id: a.orgId,
              session_id: session,
            }, {
              token: b.token,
            });
            assertEquals(await statusOf(taken), 200);
            upstream.release();
            const res = await pending;
            let requestId: string;
            if (stream) {
              assertEquals(res.status, 200);
              const last = parseSse(await res.text()).at(-1)!;
              assertEquals(last.event, "error");
              assertEquals(last.data.error.code, "session_not_found");
              requestId = last.data.error.request_id;
            } else {
              requestId = (await expectError(res, 404, "session_not_found")).error.request_id;
            }
            const rows = await h.usageRows(requestId);
            assertEquals(rows.length, 1, "exactly one row");
            assertEquals(requestLines(h, "metering-race-a-0001").length, 1, "one log line");
            assertEquals(rows[0]!.error_code, "session_not_found");
            assertEquals(rows[0]!.total_tokens, 22, "the answered call's reported tokens");
            assertEquals((rows[0]!.metadata as Meta).tokens_estimated, undefined);
            assertEquals(rows[0]!.org_id, a.orgId);
          }),
      ));
  }

  Deno.test(`metering (${store}): a stream cut short records estimated tokens, flagged, in one row`, () =>
    withHarness({ store }, async (h) => {
      const m = await h.member();
      h.openai.script({ kind: "cut", afterChunks: 2 });
      const res = await h.call({ message: "a long story please", org_id: m.orgId, stream: true }, {
        token: m.token,
      });
      const last = parseSse(await res.text()).at(-1)!;
      assertEquals(last.event, "error");
      const rows = await h.usageRows(last.data.error.request_id);
      assertEquals(rows.length, 1);
      assertEquals(rows[0]!.error_code, "openai_error");
      assert(Number(rows[0]!.prompt_tokens) > 0);
      assert(Number(rows[0]!.completion_tokens) > 0, "the text that arrived is counted");
      assertEquals((rows[0]!.metadata as Meta).tokens_estimated, true);
    }));
}

Deno.test("metering (redis via Upstash): the store failing after the model answered is 200, then one row carrying the tokens at the deadline", () =>
  withGatedUpstream(1, (upstream) =>
    withHarness({
      store: "redis",
      redisVia: "upstash",
      env: { OPENAI_BASE_URL: upstream.baseURL, AI_AGENT_TURN_DEADLINE_SECONDS: "5" },
    }, async (h) => {
      const m = await h.member();
      const pending = h.call({ message: "hi", org_id: m.orgId }, { token: m.token });
      await waitFor(() => upstream.requests, (n) => n >= 1);
      // Redis (behind Upstash) goes away while the model call is held.
      const upstash = h.upstash!;
      const stopUpstash = upstash.stop;
      upstash.stop = () => Promise.resolve();
      await stopUpstash();
      upstream.release();
      const res = await pending;
      assertEquals(res.status, 200, "the answer is sent; the save is retried");
      const requestId = res.headers.get("x-request-id")!;
      await res.body?.cancel();
      // Given up about 5 s after the failed save: its deadline wakes the retry loop.
      const rows = await waitFor(() => h.usageRows(requestId), (r) => r.length > 0, 15_000);
      assertEquals(rows.length, 1);
      assertEquals(rows[0]!.total_tokens, 22);
      assertEquals(
        rows[0]!.error_code,
        "session_store_error",
        "never saved: given up at the deadline",
      );
    })));

for (const transport of ["rpc", "postgres"] as const) {
  Deno.test(`metering (${transport} transport): a save that times out but commits later must not meter the call twice`, () =>
    // agent_finish_turn is abandoned after AI_AGENT_DB_TIMEOUT_MS; the database
    // still completes it (turn + usage row) once the lock is released.
    withHarness({ transport, env: { AI_AGENT_DB_TIMEOUT_MS: "400" } }, async (h) => {
      const m = await h.member();
      const { session_id } = await (await h.call({ message: "one", org_id: m.orgId }, {
        token: m.token,
      })).json();
      let release!: () => void;
      const released = new Promise<void>((r) => (release = r));
      let locked!: () => void;
      const isLocked = new Promise<void>((r) => (locked = r));
      const holder = h.sql.begin(async (tx) => {
        await tx`select id from public.agent_sessions where id = ${session_id} for update`;
        locked();
        await released;
      });
      await isLocked;
      let requestId: string;
      try {
        const res = await h.call({ message: "two", org_id: m.orgId, session_id }, {
          token: m.token,
        });
        // Unknown, not failed: the answer is sent and the save retried.
        assertEquals(res.status, 200, await res.text());
        requestId = res.headers.get("x-request-id")!;
      } finally {
        release();
        await holder;
      }
      // The abandoned call commits now, and the retried save finds it landed.
      const recovered = () =>
        h.logs.some((l) => l.event === "write_recovered" && l.fields.request_id === requestId);
      assert(await waitFor(recovered, (done) => done, 8000), "the retried save ended");
      const rows = await h.usageRows(requestId);
      const again = rows;
      assertEquals(
        again.length,
        1,
        `one model call, rows: ${JSON.stringify(again.map((r) => r.error_code ?? "ok"))}`,
      );
      assertEquals(rows[0]!.success, true, "the save landed");
      const [stored] = await h.sql`select count(*)::int as n from public.agent_session_messages
        where session_id = ${session_id}`;
      assertEquals(stored!.n, 4, "the turn is stored once");
    }));
}

Deno.test("metering: an attempt the SDK retried after its timeout is metered too", () =>
  // Production default: AI_AGENT_OPENAI_MAX_RETRIES=1. The first attempt reached
  // the model (and may be billed); only the second one reported usage.
  withHarness({
    env: { AI_AGENT_OPENAI_MAX_RETRIES: "1", AI_AGENT_OPENAI_TIMEOUT_MS: "1000" },
  }, async (h) => {
    const m = await h.member();
    h.openai.script({ kind: "reply", text: "too late", latencyMs: 2500 });
    const res = await h.call({ message: "hi", org_id: m.orgId }, {
      token: m.token,
      headers: { "x-request-id": "retried-call-0001" },
    });
    const body = await res.json();
    assertEquals(res.status, 200, JSON.stringify(body));
    assertEquals(h.openai.requests.length, 2, "two model calls");
    const rows = await h.sql`select * from public.agent_usage_events
      where metadata->>'client_request_id' = 'retried-call-0001'`;
    const metered = rows.reduce((n, r) => n + Number(r.prompt_tokens ?? 0), 0);
    assert(
      metered >= 2 * body.usage.prompt_tokens,
      `two calls sent ${2 * body.usage.prompt_tokens} prompt tokens, ${metered} metered`,
    );
  }));

/** An OpenAI-compatible upstream that never reports usage (some gateways and proxies do this). */
function usagelessUpstream() {
  const server = Deno.serve({ port: 0, hostname: "127.0.0.1", onListen: () => {} }, async (req) => {
    const body = await req.json();
    return completionResponse(body, "an answer of some length", undefined, "chatcmpl-x");
  });
  return {
    baseURL: `http://127.0.0.1:${server.addr.port}/v1`,
    stop: () => server.shutdown(),
  };
}

Deno.test("metering: an upstream that never reports usage is metered with estimated, flagged tokens", async () => {
  const upstream = usagelessUpstream();
  try {
    await withHarness({ env: { OPENAI_BASE_URL: upstream.baseURL } }, async (h) => {
      const m = await h.member();
      for (const stream of [false, true]) {
        const res = await h.call({ message: "hello there", org_id: m.orgId, stream }, {
          token: m.token,
        });
        assertEquals(res.status, 200);
        const text = await res.text();
        const requestId = stream
          ? parseSse(text).at(-1)!.data.request_id
          : JSON.parse(text).request_id;
        const [row] = await h.usageRows(requestId);
        assert(Number(row!.total_tokens) > 0, `${stream ? "SSE" : "JSON"}: tokens metered`);
        assertEquals((row!.metadata as Meta).tokens_estimated, true);
      }
    });
  } finally {
    await upstream.stop();
  }
});
