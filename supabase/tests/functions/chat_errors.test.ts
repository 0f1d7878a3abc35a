/** The error contract of ../shared/DESIGN.md, end to end, with the usage row each outcome leaves. */
import { assert, assertEquals, assertMatch } from "./assert.ts";
import { type Harness, testUrls } from "../support/function-harness.ts";
import { startTcpProxy } from "../support/tcp-proxy.ts";
import { parseSse } from "../support/sse.ts";
import { createUsageLogger } from "../../functions/agent-chat/usage.ts";
import { expectError, withHarness } from "../support/test-helpers.ts";

Deno.test("method and preflight: OPTIONS answers CORS, GET is 405", () =>
  withHarness({}, async (h) => {
    const pre = await fetch(h.url, {
      method: "OPTIONS",
      headers: { origin: "https://app.example" },
    });
    await pre.body?.cancel();
    assertEquals(pre.status, 204);
    assertEquals(pre.headers.get("access-control-allow-origin"), "*");
    assertMatch(pre.headers.get("access-control-allow-headers") ?? "", /authorization/);
    const get = await fetch(h.url);
    await expectError(get, 405, "method_not_allowed");
  }));

Deno.test("invalid bodies are 400 invalid_request; the first is a row, the rest one aggregated row", () =>
  withHarness({ env: { AI_AGENT_REFUSAL_LOG_INTERVAL_SECONDS: "1" } }, async (h) => {
    const m = await h.member();
    const cases: Array<[string, unknown]> = [
      ["bad json", "{not json"],
      ["array", "[1,2]"],
      ["empty message", { message: "   ", org_id: m.orgId }],
      ["too long", { message: "x".repeat(4001), org_id: m.orgId }],
      ["bad org", { message: "hi", org_id: "not-a-uuid" }],
      ["bad session", { message: "hi", org_id: m.orgId, session_id: "123" }],
      ["unknown field", { message: "hi", org_id: m.orgId, admin: true }],
      ["bad channel", { message: "hi", org_id: m.orgId, channel: "WhatsApp!" }],
      ["huge metadata", { message: "hi", org_id: m.orgId, metadata: { blob: "x".repeat(3000) } }],
      ["huge body", { message: "hi", org_id: m.orgId, pad: "x".repeat(40_000) }],
      ["lone surrogate", `{"message":"hi \\ud800","org_id":"${m.orgId}"}`],
      ["surrogate key", `{"message":"hi","org_id":"${m.orgId}","metadata":{"\\udc00":1}}`],
    ];
    const ids: string[] = [];
    for (const [name, body] of cases) {
      const res = await h.call(body, { token: m.token });
      const err = await expectError(res, 400, "invalid_request");
      assert(!/at \w+ \(|\.ts:\d+/.test(err.error.message), `${name}: no stack trace`);
      ids.push(err.error.request_id);
    }
    const first = await h.usageRows(ids[0]!);
    assertEquals(first.length, 1);
    assertEquals(first[0]!.error_code, "invalid_request");
    for (const id of ids.slice(1)) assertEquals((await h.usageRows(id)).length, 0);
    const aggregated = await waitForRows(h, m.userId, "invalid_request", 2);
    assertEquals(aggregated.map((r) => r.event_count), [1, cases.length - 1]);
    assertEquals(h.openai.requests.length, 0);
  }));

/** The usage rows of one user and code, once there are `n` (bounded wait). */
async function waitForRows(h: Harness, userId: string, code: string, n: number, ms = 3000) {
  let rows: Array<Record<string, unknown>> = [];
  for (let i = 0; i < ms / 20 && rows.length < n; i++) {
    await new Promise((r) => setTimeout(r, 20));
    rows = await h.sql`select * from public.agent_usage_events
                       where user_id = ${userId} and error_code = ${code} order by id`;
  }
  return rows;
}

Deno.test("authentication: missing, forged, foreign and expired tokens are 401; HS256 legacy tokens work", () =>
  withHarness({}, async (h) => {
    const m = await h.member();
    const body = { message: "hi", org_id: m.orgId };
    await expectError(await h.call(body), 401, "unauthorized");
    await expectError(await h.call(body, { token: "abc.def.ghi" }), 401, "unauthorized");
    await expectError(
      await h.call(body, { token: await h.auth.foreignToken(m.userId) }),
      401,
      "unauthorized",
    );
    const expired = await h.auth.userToken(m.userId, { expiresInSeconds: -60 });
    await expectError(await h.call(body, { token: expired }), 401, "unauthorized");
    // A token whose payload was edited after signing.
    const [head, payload, sig] = m.token.split(".");
    const claims = JSON.parse(atob(payload!.replace(/-/g, "+").replace(/_/g, "/")));
    claims.sub = crypto.randomUUID();
    const tampered = `${head}.${
      btoa(JSON.stringify(claims)).replace(/=+$/, "").replace(/\+/g, "-").replace(/\//g, "_")
    }.${sig}`;
    await expectError(await h.call(body, { token: tampered }), 401, "unauthorized");
    const legacy = await h.auth.userToken(m.userId, { alg: "HS256" });
    const ok = await h.call(body, { token: legacy });
    assertEquals(ok.status, 200);
    await ok.body?.cancel();
  }));

Deno.test("membership: a non-member is 403 forbidden; a user token may not assert user_id or client_ip", () =>
  withHarness({}, async (h) => {
    const m = await h.member();
    const outsider = await h.member();
    await expectError(
      await h.call({ message: "hi", org_id: m.orgId }, { token: outsider.token }),
      403,
      "forbidden",
    );
    await expectError(
      await h.call({ message: "hi", org_id: m.orgId, user_id: outsider.userId }, {
        token: m.token,
      }),
      403,
      "forbidden",
    );
    await expectError(
      await h.call({ message: "hi", org_id: m.orgId, client_ip: "1.2.3.4" }, { token: m.token }),
      403,
      "forbidden",
    );
    assertEquals(h.openai.requests.length, 0);
  }));

Deno.test("service mode: the secret key may assert user_id and client_ip; membership still applies", () =>
  withHarness({}, async (h) => {
    const m = await h.member();
    const res = await h.call(
      {
        message: "from whatsapp",
        org_id: m.orgId,
        user_id: m.userId,
        client_ip: "41.186.0.7",
        channel: "whatsapp",
      },
      { token: h.secretKey },
    );
    const body = await res.json();
    assertEquals(res.status, 200, JSON.stringify(body));
    const [row] = await h.usageRows(body.request_id);
    assertEquals(row!.user_id, m.userId);
    assertEquals(row!.channel, "whatsapp");
    assertEquals((row!.metadata as Record<string, unknown>).client_ip, "41.186.0.7");
    const bucket = await h
      .sql`select slot_total from ops.rate_limits where bucket_key = 'ip:41.186.0.7'`;
    assertEquals(bucket[0]!.slot_total, 1);
    await expectError(
      await h.call({ message: "x", org_id: m.orgId }, { token: h.secretKey }),
      400,
      "invalid_request",
    );
    const stranger = crypto.randomUUID();
    await expectError(
      await h.call({ message: "x", org_id: m.orgId, user_id: stranger }, { token: h.secretKey }),
      403,
      "forbidden",
    );
    // The apikey header alone also identifies a server-side caller.
    const viaApikey = await h.call({ message: "x", org_id: m.orgId, user_id: m.userId }, {
      headers: { apikey: h.secretKey },
    });
    assertEquals(viaApikey.status, 200);
    await viaApikey.body?.cancel();
  }));

Deno.test("opt-outs: org-wide, member and channel opt-outs are 403 opt_out; expired ones are ignored", () =>
  withHarness({}, async (h) => {
    const m = await h.member();
    const other = await h.member(m.orgId);
    await h.sql`insert into public.agent_opt_outs (org_id, user_id, channel, reason, created_by)
                values (${m.orgId}, ${m.userId}, 'whatsapp', 'asked to stop', 'test')`;
    // Only a server-side caller may speak for the whatsapp channel.
    await expectError(
      await h.call({ message: "hi", org_id: m.orgId, channel: "whatsapp", user_id: m.userId }, {
        token: h.secretKey,
      }),
      403,
      "opt_out",
    );
    const app = await h.call({ message: "hi", org_id: m.orgId }, { token: m.token });
    assertEquals(app.status, 200);
    await app.body?.cancel();
    await h.sql`insert into public.agent_opt_outs (org_id, reason, created_by, expires_at)
                values (${m.orgId}, 'pilot ended', 'test', now() - interval '1 minute')`;
    const still = await h.call({ message: "hi", org_id: m.orgId }, { token: other.token });
    assertEquals(still.status, 200);
    await still.body?.cancel();
    await h
      .sql`insert into public.agent_opt_outs (org_id, reason, created_by) values (${m.orgId}, 'paused', 'test')`;
    const body = await expectError(
      await h.call({ message: "hi", org_id: m.orgId }, { token: other.token }),
      403,
      "opt_out",
    );
    assertEquals((await h.usageRows(body.error.request_id))[0]!.error_code, "opt_out");
  }));

Deno.test("rate limit: 429 names the refusing scope with Retry-After; a refused request consumes no bucket", () =>
  withHarness({
    env: { AI_AGENT_RATE_LIMIT_USER_MAX_REQUESTS: "2", AI_AGENT_RATE_LIMIT_WINDOW_SECONDS: "60" },
  }, async (h) => {
    const m = await h.member();
    for (let i = 0; i < 2; i++) {
      const ok = await h.call({ message: `hi ${i}`, org_id: m.orgId }, { token: m.token });
      assertEquals(ok.status, 200);
      assertEquals(ok.headers.get("ratelimit-remaining"), String(1 - i));
      await ok.body?.cancel();
    }
    const res = await h.call({ message: "one more", org_id: m.orgId }, { token: m.token });
    const body = await expectError(res, 429, "rate_limit");
    assertMatch(body.error.message, /user/);
    const retry = Number(res.headers.get("retry-after"));
    // A request counts until its 3-second slot has left the 60-second window.
    assert(retry >= 1 && retry <= 63, `retry-after ${retry}`);
    assertMatch(res.headers.get("ratelimit") ?? "", /^"user";r=0;t=\d+$/);
    assertEquals(res.headers.get("ratelimit-limit"), "2");
    const [org] = await h.sql`select slot_total from ops.rate_limits where bucket_key = ${
      "org:" + m.orgId
    }`;
    assertEquals(org!.slot_total, 2);
    const [row] = await h.usageRows(body.error.request_id);
    assertEquals(row!.error_code, "rate_limit");
    assertEquals((row!.metadata as { rate_limit: { scope: string } }).rate_limit.scope, "user");
  }));

Deno.test("openai failures are 502 openai_error, keep upstream detail out of the answer, and save no turn", () =>
  withHarness({ env: { AI_AGENT_OPENAI_TIMEOUT_MS: "1000" } }, async (h) => {
    const m = await h.member();
    h.openai.script(
      { kind: "error", status: 500, message: "secret upstream detail" },
      { kind: "error", status: 429 },
      { kind: "error", status: 503 },
      { kind: "malformed" },
      { kind: "hang" },
    );
    for (const name of ["500", "429", "503", "malformed", "hang"]) {
      const started = performance.now();
      const res = await h.call({ message: "hi", org_id: m.orgId }, { token: m.token });
      const body = await expectError(res, 502, "openai_error");
      assert(performance.now() - started < 5000, `${name} bounded`);
      assert(!JSON.stringify(body).includes("secret upstream detail"));
      const [row] = await h.usageRows(body.error.request_id);
      assertEquals(row!.error_code, "openai_error", name);
      assert(String(row!.error_message).length > 0);
    }
    const sessions = await h
      .sql`select count(*)::int as n from public.agent_sessions where user_id = ${m.userId}`;
    assertEquals(sessions[0]!.n, 0);
  }));

Deno.test("streams: an upstream cut midway ends with an error event and saves nothing", () =>
  withHarness({}, async (h) => {
    const m = await h.member();
    h.openai.script({ kind: "cut", afterChunks: 1 });
    const res = await h.call({ message: "tell me a long story", org_id: m.orgId, stream: true }, {
      token: m.token,
    });
    assertEquals(res.status, 200);
    const events = parseSse(await res.text());
    const last = events.at(-1)!;
    assertEquals(last.event, "error");
    assertEquals(last.data.error.code, "openai_error");
    const [row] = await h.usageRows(last.data.error.request_id);
    assertEquals(row!.error_code, "openai_error");
    const n = await h
      .sql`select count(*)::int as n from public.agent_sessions where user_id = ${m.userId}`;
    assertEquals(n[0]!.n, 0);
    // An upstream that fails before the first byte is a plain 502.
    h.openai.script({ kind: "error", status: 500 });
    await expectError(
      await h.call({ message: "x", org_id: m.orgId, stream: true }, { token: m.token }),
      502,
      "openai_error",
    );
  }));

Deno.test("streams: a client that disconnects aborts the upstream call, and that is logged", () =>
  withHarness({}, async (h) => {
    const m = await h.member();
    h.openai.script({ kind: "reply", text: "word ".repeat(200), chunkDelayMs: 20 });
    const controller = new AbortController();
    const res = await fetch(h.url, {
      method: "POST",
      signal: controller.signal,
      headers: {
        authorization: `Bearer ${m.token}`,
        "content-type": "application/json",
        "x-request-id": "disconnect-test-0001",
      },
      body: JSON.stringify({ message: "go", org_id: m.orgId, stream: true }),
    });
    const reader = res.body!.getReader();
    await reader.read();
    await reader.read();
    controller.abort();
    await reader.cancel().catch(() => {});
    let rows: Array<Record<string, unknown>> = [];
    for (let i = 0; i < 250 && rows.length === 0; i++) {
      await new Promise((r) => setTimeout(r, 20));
      rows = await h.sql`select * from public.agent_usage_events
                         where metadata->>'client_request_id' = 'disconnect-test-0001'`;
    }
    assertEquals(rows.length, 1);
    assertEquals(rows[0]!.error_code, "client_closed");
    for (let i = 0; i < 250 && h.openai.aborted === 0; i++) {
      await new Promise((r) => setTimeout(r, 20));
    }
    assertEquals(h.openai.aborted, 1);
  }));

Deno.test("session store down: Redis unreachable after the answer is 200, the save is retried to the deadline, then one session_store_error row with the tokens", () =>
  withHarness({
    store: "redis",
    env: { AI_AGENT_REDIS_URL: "redis://127.0.0.1:1", AI_AGENT_TURN_DEADLINE_SECONDS: "5" },
  }, async (h) => {
    const m = await h.member();
    // A new session reads nothing; the write cannot reach Redis: its outcome is "not yet".
    const first = await h.call({ message: "hi", org_id: m.orgId }, { token: m.token });
    const text = await first.text();
    assertEquals(first.status, 200, text);
    const requestId = first.headers.get("x-request-id")!;
    assertEquals((await h.usageRows(requestId)).length, 0, "no row while the save is retried");
    const [row] = await waitForRows(h, m.userId, "session_store_error", 1, 8000);
    assertEquals(row!.request_id, requestId);
    assert(Number(row!.total_tokens) > 0, "the model call is metered");
    assertEquals((await h.usageRows(requestId)).length, 1, "once");
    // A turn on a known session reads Redis first: 503 before the model, nothing billed.
    const again = await h.call(
      { message: "hi", org_id: m.orgId, session_id: crypto.randomUUID() },
      { token: m.token },
    );
    await expectError(again, 503, "session_store_error");
  }));

Deno.test("database down: the direct transport to a dead Postgres is 503 session_store_error, not 500", () =>
  withHarness({
    transport: "postgres",
    env: { AI_AGENT_DATABASE_URL: "postgres://postgres@127.0.0.1:1/postgres" },
  }, async (h) => {
    const m = await h.member();
    const res = await h.call({ message: "hi", org_id: m.orgId }, { token: m.token });
    const body = await expectError(res, 503, "session_store_error");
    assert(!/127\.0\.0\.1|ECONNREFUSED|postgres:/.test(JSON.stringify(body)));
    assert(
      h.logs.some((l) => l.event === "usage_log_failed"),
      "the failed usage insert is a structured log line",
    );
  }));

Deno.test("usage: a failing usage insert never fails the request; AI_AGENT_USAGE_LOG_ENABLED=false writes none", async () => {
  await withHarness({
    store: "redis",
    adjust: (deps) => {
      deps.usage = createUsageLogger({
        enabled: true,
        db: {
          logUsage: () => Promise.reject(new Error("insert refused")),
          settleUsage: () => Promise.reject(new Error("insert refused")),
        },
        log: deps.log,
        extendLifetime: undefined,
      });
    },
  }, async (h) => {
    const m = await h.member();
    const res = await h.call({ message: "hi", org_id: m.orgId }, { token: m.token });
    assertEquals(res.status, 200);
    await res.body?.cancel();
    assert(
      h.logs.some((l) =>
        l.event === "usage_log_failed" && /insert refused/.test(String(l.fields.detail))
      ),
    );
  });
  await withHarness({ env: { AI_AGENT_USAGE_LOG_ENABLED: "false" } }, async (h) => {
    const m = await h.member();
    const res = await h.call({ message: "hi", org_id: m.orgId }, { token: m.token });
    const body = await res.json();
    assertEquals(res.status, 200);
    assertEquals((await h.usageRows(body.request_id)).length, 0);
  });
});

for (const store of ["supabase", "redis"] as const) {
  Deno.test(`concurrency (${store}): 16 turns at once on one session lose nothing`, () =>
    withHarness({ store, env: { AI_AGENT_SESSION_MAX_MESSAGES: "100" } }, async (h) => {
      const m = await h.member();
      const a = await (await h.call({ message: "start", org_id: m.orgId }, { token: m.token }))
        .json();
      const results = await Promise.all(
        Array.from(
          { length: 16 },
          (_, i) =>
            h.call({ message: `turn ${i}`, org_id: m.orgId, session_id: a.session_id }, {
              token: m.token,
            })
              .then(async (r) => {
                await r.body?.cancel();
                return r.status;
              }),
        ),
      );
      assertEquals(results.filter((s) => s === 200).length, 16);
      h.openai.script({ kind: "reply", text: "last" });
      await (await h.call({ message: "count", org_id: m.orgId, session_id: a.session_id }, {
        token: m.token,
      })).json();
      const seen = h.openai.requests.at(-1)!.body.messages.filter((x) => x.role === "user").map((
        x,
      ) => x.content);
      // start + 16 turns, each with its reply, then the new message.
      assertEquals(seen.length, 18);
      for (let i = 0; i < 16; i++) assert(seen.includes(`turn ${i}`), `turn ${i} kept`);
    }));
}

Deno.test("database half-open: calls time out as 503 within the bound, then fresh connections answer again", async () => {
  const { databaseUrl } = testUrls();
  const target = new URL(databaseUrl);
  const proxy = startTcpProxy({ hostname: target.hostname, port: Number(target.port) });
  const viaProxy = new URL(databaseUrl);
  viaProxy.port = String(proxy.port);
  try {
    await withHarness({
      transport: "postgres",
      env: { AI_AGENT_DATABASE_URL: viaProxy.href, AI_AGENT_DB_TIMEOUT_MS: "500" },
    }, async (h) => {
      const m = await h.member();
      const ok = await h.call({ message: "before", org_id: m.orgId }, { token: m.token });
      assertEquals(ok.status, 200);
      await ok.body?.cancel();
      proxy.blackhole();
      const started = performance.now();
      // Enough at once to leave every pooled connection stuck on a dead socket.
      const during = await Promise.all(
        Array.from(
          { length: 6 },
          (_, i) => h.call({ message: `during ${i}`, org_id: m.orgId }, { token: m.token }),
        ),
      );
      for (const res of during) await expectError(res, 503, "session_store_error");
      assert(performance.now() - started < 3000, "bounded by AI_AGENT_DB_TIMEOUT_MS");
      proxy.restore();
      // The swallowed connections never answer; the function must not keep using them.
      const after = await h.call({ message: "after", org_id: m.orgId }, { token: m.token });
      assertEquals(after.status, 200);
      await after.body?.cancel();
    });
  } finally {
    await proxy.stop();
  }
});
