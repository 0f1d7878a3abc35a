/**
 * agent-chat's security controls, attacked end to end: real HTTP to the
 * function behind the gateway stand-in, real Postgres and Redis.
 *
 * Each test names the control it proves. Tests whose title ends in
 * "[needs DB branch]" depend on database work that is not merged yet
 * (the agent_usage_events.event_count column; agent_begin_turn checking
 * membership before opt-outs and charging one user: slot per
 * forbidden/opt_out/session_not_found refusal; the opt-out channel CHECK).
 *
 * Waits are bounded polls on an observable (a row, a log line, a recorded
 * upstream request), never a bare sleep that a slow machine could lose.
 */
import postgres from "postgres";
import { SignJWT } from "jose";
import { assert, assertEquals, assertMatch } from "./assert.ts";
import type { Harness, Member } from "../support/function-harness.ts";
import { parseSse } from "../support/sse.ts";
import { type AgentChatDeps, createAgentChatHandler } from "../../functions/agent-chat/handler.ts";
import { loadConfig } from "../../functions/agent-chat/config.ts";
import { expectError, statusOf, withDb, withHarness } from "../support/test-helpers.ts";
import { concat, type Part, rawHttp } from "../support/raw-http.ts";
import { completionResponse } from "../support/completion.ts";

const utf8 = new TextEncoder();

type Row = Record<string, unknown>;
type Meta = Record<string, unknown>;
const STORES = ["supabase", "redis"] as const;
type Store = typeof STORES[number];

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

/** Polls `probe` until it returns a value `done` accepts (bounded); returns the last value. */
async function waitFor<T>(
  probe: () => Promise<T> | T,
  done: (value: T) => boolean,
  timeoutMs = 5000,
): Promise<T> {
  const until = performance.now() + timeoutMs;
  let value = await probe();
  while (!done(value) && performance.now() < until) {
    await new Promise((r) => setTimeout(r, 20));
    value = await probe();
  }
  return value;
}

async function rowsOfUser(sql: postgres.Sql, userId: string): Promise<Row[]> {
  return await sql`select * from public.agent_usage_events where user_id = ${userId} order by id`;
}

async function bucket(sql: postgres.Sql, key: string): Promise<number> {
  const rows = await sql`select slot_total from ops.rate_limits where bucket_key = ${key}`;
  return Number(rows[0]?.slot_total ?? 0);
}

/** The request log lines (one per request) carrying this client request id. */
function requestLines(h: Harness, clientRequestId: string) {
  return h.logs.filter((l) =>
    l.event === "request" && l.fields.client_request_id === clientRequestId
  );
}

/** A per-test address in 198.18.0.0/15 (benchmark range; no other test uses it). */
function testIp(): string {
  const r = () => Math.floor(Math.random() * 250) + 1;
  return `198.18.${r()}.${r()}`;
}

/** Runs `tasks` with at most `width` in flight; results in order. */
async function pooled<T>(count: number, width: number, task: (i: number) => Promise<T>) {
  const out: T[] = new Array(count);
  let next = 0;
  await Promise.all(Array.from({ length: width }, async () => {
    while (next < count) {
      const i = next++;
      out[i] = await task(i);
    }
  }));
  return out;
}

// ---------------------------------------------------------------------------
// Raw HTTP/1.1 over TCP: for what fetch will not send (lying Content-Length,
// slow or cut bodies, raw bytes).
// ---------------------------------------------------------------------------

function rawHead(
  options: {
    token?: string;
    ip?: string;
    contentLength?: number;
    chunked?: boolean;
    extra?: Record<string, string>;
    method?: string;
  },
): string {
  const lines = [
    `${options.method ?? "POST"} /functions/v1/agent-chat HTTP/1.1`,
    "host: 127.0.0.1",
    "content-type: application/json",
    "connection: close",
    `x-forwarded-for: ${options.ip ?? testIp()}`,
    ...(options.token ? [`authorization: Bearer ${options.token}`] : []),
    ...(options.contentLength !== undefined ? [`content-length: ${options.contentLength}`] : []),
    ...(options.chunked ? ["transfer-encoding: chunked"] : []),
    ...Object.entries(options.extra ?? {}).map(([k, v]) => `${k}: ${v}`),
  ];
  return lines.join("\r\n") + "\r\n\r\n";
}

function chunk(data: string | Uint8Array): Uint8Array {
  const bytes = typeof data === "string" ? utf8.encode(data) : data;
  return concat([utf8.encode(bytes.byteLength.toString(16) + "\r\n"), bytes, utf8.encode("\r\n")]);
}

/** An HS256 token signed with the project's legacy secret, claims as given (no defaults). */
async function hs256(secret: string, claims: Record<string, unknown>, exp?: number) {
  let jwt = new SignJWT(claims).setProtectedHeader({ alg: "HS256", typ: "JWT" }).setIssuedAt();
  if (exp !== undefined) jwt = jwt.setExpirationTime(exp);
  return await jwt.sign(new TextEncoder().encode(secret));
}

const inAnHour = () => Math.floor(Date.now() / 1000) + 3600;

// ---------------------------------------------------------------------------
// 1. Order: method → authenticate (headers only) → body (bounded) → admission
// ---------------------------------------------------------------------------

Deno.test("order: an anonymous body naming an org is never read into a row, a bucket or a log field", () =>
  withHarness({ env: { AI_AGENT_REFUSAL_LOG_INTERVAL_SECONDS: "3600" } }, async (h) => {
    const since = new Date(Date.now() - 1000);
    const named = crypto.randomUUID();
    const ip = testIp();
    const hex = () => Math.floor(Math.random() * 0xffff).toString(16);
    const assertedIp = `2001:db8:${hex()}:${hex()}::${hex()}`;
    const body = {
      message: "hi",
      org_id: named,
      user_id: crypto.randomUUID(),
      client_ip: assertedIp,
      channel: "whatsapp",
    };
    const calls = h.gateway.postgrest.calls;
    await expectError(await h.call(body, { ip }), 401, "unauthorized");
    await expectError(await h.call(body, { ip, token: "not-a-jwt" }), 401, "unauthorized");
    // A body that fails validation is still 401: it is never read without credentials.
    await expectError(
      await h.call(`{"message":"\\ud800","org_id":"${named}"`, { ip }),
      401,
      "unauthorized",
    );
    assertEquals(h.gateway.postgrest.calls, calls, "no database call for anonymous requests");
    assertEquals(h.openai.requests.length, 0);
    for (const line of h.logs.filter((l) => l.event === "request")) {
      assertEquals(line.fields.org_id, null);
      assertEquals(line.fields.user_id, null);
    }
    await h.stop().catch(() => {}); // flushes the aggregated row now
    await withDb(async (sql) => {
      const carrying = await sql`select id from public.agent_usage_events
        where org_id = ${named} or (created_at >= ${since} and (
          metadata::text like ${"%" + named + "%"} or metadata::text like ${
        "%" + assertedIp + "%"
      }))`;
      assertEquals(carrying.length, 0, "nothing of the anonymous body is stored");
      const buckets = await sql`select bucket_key from ops.rate_limits
        where bucket_key in (${"org:" + named}, ${"ip:" + assertedIp}, ${"user:" + body.user_id})`;
      assertEquals(buckets.length, 0);
    });
  }));

Deno.test("order: without credentials a body that never arrives is 401 at once (headers only)", () =>
  withHarness({ env: { AI_AGENT_BODY_TIMEOUT_MS: "10000" } }, async (h) => {
    // Content-Length promises 500 bytes that are never sent.
    const res = await rawHttp(h.gateway.port, [rawHead({ contentLength: 500 }), {
      delayMs: 8000,
    }], 6000);
    assert(res, "answered without waiting for the body");
    assertEquals(res.status, 401);
    assertEquals(JSON.parse(res.body).error.code, "unauthorized");
    assert(res.ms < 3000, `answered in ${Math.round(res.ms)} ms`);
  }));

Deno.test("order: an authenticated body that does not arrive in AI_AGENT_BODY_TIMEOUT_MS is 408 invalid_request", () =>
  withHarness({ env: { AI_AGENT_BODY_TIMEOUT_MS: "400" } }, async (h) => {
    const m = await h.member();
    // Headers promise 300 bytes; 20 arrive, then nothing.
    const stalled = await rawHttp(h.gateway.port, [
      rawHead({ token: m.token, ip: m.ip, contentLength: 300 }),
      `{"message":"hello", `,
      { delayMs: 6000 },
    ], 5000);
    assert(stalled, "a stalled body is answered");
    assertEquals(stalled.status, 408);
    assertEquals(JSON.parse(stalled.body).error.code, "invalid_request");
    assert(stalled.ms < 3000, `408 after ${Math.round(stalled.ms)} ms`);
    // A chunked body trickling one byte every 50 ms never pauses long, but
    // the whole body must arrive in time: the bound is on the total.
    const text = JSON.stringify({ message: "x".repeat(200), org_id: m.orgId });
    const trickle: Part[] = [rawHead({ token: m.token, ip: m.ip, chunked: true })];
    for (const ch of text) trickle.push(chunk(ch), { delayMs: 50 });
    trickle.push("0\r\n\r\n");
    const slow = await rawHttp(h.gateway.port, trickle, 6000);
    assert(slow, "a trickling body is answered");
    assertEquals(slow.status, 408);
    assert(slow.ms < 3000, `408 after ${Math.round(slow.ms)} ms`);
    assertEquals(h.openai.requests.length, 0);
    const buckets = await bucket(h.sql, `user:${m.userId}`);
    assertEquals(buckets, 0, "no bucket before the body is whole");
  }));

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

// ---------------------------------------------------------------------------
// 2. Anonymous refusals: counted per isolate, one aggregated row per interval
// ---------------------------------------------------------------------------

Deno.test("anonymous flood: 2,000 refusals from one address cost no database call; 429 from the 31st; one aggregated row", () =>
  withHarness({ env: { AI_AGENT_REFUSAL_LOG_INTERVAL_SECONDS: "3600" } }, async (h) => {
    const since = new Date(Date.now() - 1000);
    const ip = testIp();
    const m = await h.member();
    const named = crypto.randomUUID();
    const calls = h.gateway.postgrest.calls;
    const statuses: number[] = [];
    // 20 without credentials, 10 with a wrong method: the limit (30) is reached exactly.
    for (let i = 0; i < 20; i++) {
      statuses.push(await statusOf(await h.call({ message: "x", org_id: named }, { ip })));
    }
    for (let i = 0; i < 10; i++) {
      statuses.push(
        await statusOf(await fetch(h.url, { method: "GET", headers: { "x-forwarded-for": ip } })),
      );
    }
    assertEquals(statuses, [...Array(20).fill(401), ...Array(10).fill(405)]);
    // From now on: 429 before authentication, even with a valid token.
    const valid = await h.call({ message: "x", org_id: m.orgId }, { ip, token: m.token });
    const refused = await expectError(valid, 429, "rate_limit");
    assertMatch(valid.headers.get("retry-after") ?? "", /^\d+$/);
    assertEquals(refused.error.code, "rate_limit");
    const rest = await pooled(1969, 16, async (i) =>
      await statusOf(
        i % 2
          ? await h.call({ message: "x", org_id: named }, { ip, token: "forged.token.value" })
          : await h.call({ message: "x", org_id: named }, { ip }),
      ));
    assertEquals(rest.filter((s) => s !== 429).length, 0, "every later request is 429");
    assertEquals(h.gateway.postgrest.calls, calls, "2,000 refusals, no database call");
    assertEquals(h.openai.requests.length, 0);
    // One structured log line per request.
    const lines = h.logs.filter((l) => l.event === "request");
    assertEquals(lines.length, 2000);
    assertEquals(new Set(lines.map((l) => l.fields.request_id)).size, 2000);
    assertEquals(lines.filter((l) => l.fields.status === 429).length, 1970);
    await h.stop().catch(() => {});
    await withDb(async (sql) => {
      const rows = await sql`select * from public.agent_usage_events
        where error_code = 'anonymous_refusals' and created_at >= ${since}
          and metadata->'top_ips' @> ${sql.json([{ ip }])}`;
      assertEquals(rows.length, 1, "one aggregated row for the isolate's interval");
      const row = rows[0]!;
      assertEquals(row.org_id, null);
      assertEquals(row.user_id, null);
      const meta = row.metadata as Meta;
      assertEquals(meta.by_code, { unauthorized: 20, method_not_allowed: 10, rate_limit: 1970 });
      assertEquals((meta.top_ips as Array<{ ip: string; count: number }>)[0], { ip, count: 2000 });
      const named_ = await sql`select 1 from public.agent_usage_events where org_id = ${named}`;
      assertEquals(named_.length, 0);
    });
  }));

Deno.test("anonymous flood from 2,000 addresses: one row per interval at most, top_ips bounded", () =>
  withHarness({ env: { AI_AGENT_REFUSAL_LOG_INTERVAL_SECONDS: "1" } }, async (h) => {
    const started = performance.now();
    const since = new Date(Date.now() - 1000);
    const statuses = await pooled(2000, 16, async (i) =>
      await statusOf(
        await h.call({ message: "x", org_id: crypto.randomUUID() }, {
          ip: `198.19.${i >> 8}.${i & 255}`,
        }),
      ));
    assertEquals(statuses.filter((s) => s !== 401).length, 0, "no address reached its limit");
    await h.stop().catch(() => {});
    const seconds = (performance.now() - started) / 1000;
    await withDb(async (sql) => {
      const rows = await sql`select * from public.agent_usage_events
        where error_code = 'anonymous_refusals' and created_at >= ${since}
          and metadata->'top_ips'->0->>'ip' like '198.19.%'`;
      assert(rows.length >= 1);
      assert(
        rows.length <= Math.ceil(seconds) + 1,
        `${rows.length} rows in ${seconds.toFixed(1)} s at a 1 s interval`,
      );
      let total = 0;
      for (const r of rows) {
        const meta = r.metadata as Meta;
        assert((meta.top_ips as unknown[]).length <= 10);
        total += (meta.by_code as Record<string, number>).unauthorized ?? 0;
      }
      assertEquals(total, 2000, "every refusal is counted in some row");
    });
  }));

Deno.test("anonymous flood from one IPv6 /64: rotating the interface id does not escape the 429", () =>
  // A single IPv6 subscriber holds a whole /64: 2^64 addresses to rotate through.
  withHarness({ env: { AI_AGENT_REFUSAL_LOG_INTERVAL_SECONDS: "3600" } }, async (h) => {
    const prefix = `2001:db8:${Math.floor(Math.random() * 0xffff).toString(16)}:1`;
    const statuses: number[] = [];
    for (let i = 0; i < 60; i++) {
      const ip = `${prefix}:${(i + 1).toString(16)}:0:0:1`;
      statuses.push(await statusOf(await h.call({ message: "x" }, { ip })));
    }
    assertEquals(statuses.filter((s) => s === 429).length, 30, "429 from the 31st request");
  }));

Deno.test("anonymous refusals: the aggregated row's event_count is the number of refusals [needs DB branch]", () =>
  withHarness({ env: { AI_AGENT_REFUSAL_LOG_INTERVAL_SECONDS: "3600" } }, async (h) => {
    const since = new Date(Date.now() - 1000);
    const ip = testIp();
    for (let i = 0; i < 45; i++) await statusOf(await h.call({ message: "x" }, { ip }));
    await h.stop().catch(() => {});
    await withDb(async (sql) => {
      const rows = await sql`select * from public.agent_usage_events
        where error_code = 'anonymous_refusals' and created_at >= ${since}
          and metadata->'top_ips' @> ${sql.json([{ ip }])}`;
      assertEquals(rows.length, 1);
      assertEquals(rows[0]!.event_count, 45);
    });
  }));

// ---------------------------------------------------------------------------
// 3. Authenticated refusals: bounded writes; forbidden rows never name the org
// ---------------------------------------------------------------------------

const LIMITED = {
  AI_AGENT_RATE_LIMIT_USER_MAX_REQUESTS: "3",
  AI_AGENT_REFUSAL_LOG_INTERVAL_SECONDS: "3600",
};

/** Sends `n` identical requests in turn; statuses and error codes. */
async function repeat(h: Harness, n: number, body: unknown, who: Member) {
  const out: string[] = [];
  for (let i = 0; i < n; i++) {
    const res = await h.call(body, { token: who.token, ip: who.ip });
    const text = await res.text();
    out.push(`${res.status} ${res.status === 200 ? "ok" : JSON.parse(text).error.code}`);
  }
  return out;
}

/** The user's rows now, then (after h.stop flushes the ledger) all of them. */
async function rowsBeforeAndAfterFlush(h: Harness, userId: string) {
  const before = await rowsOfUser(h.sql, userId);
  await h.stop().catch(() => {});
  const after = await withDb((sql) => rowsOfUser(sql, userId));
  return { before, after };
}

for (const store of STORES) {
  Deno.test(`authenticated refusals (${store}): a non-member's flood writes at most one row per code, and never the foreign org_id`, () =>
    withHarness({ store, env: LIMITED }, async (h) => {
      const victim = await h.member();
      const outsider = await h.member();
      const results = await repeat(h, 12, { message: "hi", org_id: victim.orgId }, outsider);
      for (const r of results) assert(/^(403 forbidden|429 rate_limit)$/.test(r), r);
      assertEquals(await bucket(h.sql, `org:${victim.orgId}`), 0, "the victim org pays nothing");
      assertEquals(h.openai.requests.length, 0);
      const { before, after } = await rowsBeforeAndAfterFlush(h, outsider.userId);
      const codes = new Set(results.map((r) => r.split(" ")[1]));
      assertEquals(before.length, codes.size, "one row per (user, code) in the interval");
      assert(after.length <= 2 * codes.size, `${after.length} rows after the flush`);
      for (const row of after) {
        assertEquals(row.org_id, null, "a refused outsider's row names no org");
        if (row.error_code === "forbidden") {
          assertEquals((row.metadata as Meta).requested_org_id, victim.orgId);
        }
      }
      const poisoned = await withDb((sql) =>
        sql`select 1 from public.agent_usage_events where org_id = ${victim.orgId}`
      );
      assertEquals(poisoned.length, 0, "nothing lands in the victim org's reports");
    }));

  Deno.test(`authenticated refusals (${store}): forbidden charges the user: bucket, 429 past the user limit [needs DB branch]`, () =>
    withHarness({ store, env: LIMITED }, async (h) => {
      const victim = await h.member();
      const outsider = await h.member();
      const results = await repeat(h, 6, { message: "hi", org_id: victim.orgId }, outsider);
      assertEquals(results, [
        "403 forbidden",
        "403 forbidden",
        "403 forbidden",
        "429 rate_limit",
        "429 rate_limit",
        "429 rate_limit",
      ]);
      assertEquals(await bucket(h.sql, `user:${outsider.userId}`), 3);
      assertEquals(await bucket(h.sql, `org:${victim.orgId}`), 0);
      assertEquals(await bucket(h.sql, `ip:${outsider.ip}`), 0);
      const { after } = await rowsBeforeAndAfterFlush(h, outsider.userId);
      const counts = Object.fromEntries(
        ["forbidden", "rate_limit"].map((code) => [
          code,
          after.filter((r) => r.error_code === code).reduce((n, r) => n + Number(r.event_count), 0),
        ]),
      );
      assertEquals(counts, { forbidden: 3, rate_limit: 3 });
    }));

  Deno.test(`authenticated refusals (${store}): another member's session id, repeated, writes at most one row per code`, () =>
    withHarness({ store, env: LIMITED }, async (h) => {
      const owner = await h.member();
      const intruder = await h.member(owner.orgId);
      const first = await h.call({ message: "mine", org_id: owner.orgId }, { token: owner.token });
      const { session_id } = await first.json();
      const results = await repeat(h, 10, {
        message: "let me in",
        org_id: owner.orgId,
        session_id,
      }, intruder);
      for (const r of results) assert(/^(404 session_not_found|429 rate_limit)$/.test(r), r);
      assertEquals(h.openai.requests.length, 1, "only the owner's turn reached the model");
      const { before, after } = await rowsBeforeAndAfterFlush(h, intruder.userId);
      const codes = new Set(results.map((r) => r.split(" ")[1]));
      assertEquals(before.length, codes.size);
      assert(after.length <= 2 * codes.size);
    }));

  Deno.test(`authenticated refusals (${store}): session_not_found charges the user: bucket, 429 past the user limit [needs DB branch]`, () =>
    withHarness({ store, env: LIMITED }, async (h) => {
      const owner = await h.member();
      const intruder = await h.member(owner.orgId);
      const { session_id } = await (await h.call({ message: "mine", org_id: owner.orgId }, {
        token: owner.token,
      })).json();
      const results = await repeat(h, 5, {
        message: "let me in",
        org_id: owner.orgId,
        session_id,
      }, intruder);
      assertEquals(results, [
        "404 session_not_found",
        "404 session_not_found",
        "404 session_not_found",
        "429 rate_limit",
        "429 rate_limit",
      ]);
      assertEquals(await bucket(h.sql, `user:${intruder.userId}`), 3);
    }));

  Deno.test(`authenticated refusals (${store}): an opted-out member's flood writes at most one row per code`, () =>
    withHarness({ store, env: LIMITED }, async (h) => {
      const m = await h.member();
      await h.sql`insert into public.agent_opt_outs (org_id, reason, created_by)
                  values (${m.orgId}, 'paused', 'test')`;
      const results = await repeat(h, 10, { message: "hi", org_id: m.orgId }, m);
      for (const r of results) assert(/^(403 opt_out|429 rate_limit)$/.test(r), r);
      assertEquals(h.openai.requests.length, 0);
      const { before, after } = await rowsBeforeAndAfterFlush(h, m.userId);
      const codes = new Set(results.map((r) => r.split(" ")[1]));
      assertEquals(before.length, codes.size);
      assert(after.length <= 2 * codes.size);
    }));

  Deno.test(`authenticated refusals (${store}): opt_out charges the user: bucket, 429 past the user limit [needs DB branch]`, () =>
    withHarness({ store, env: LIMITED }, async (h) => {
      const m = await h.member();
      await h.sql`insert into public.agent_opt_outs (org_id, reason, created_by)
                  values (${m.orgId}, 'paused', 'test')`;
      const results = await repeat(h, 5, { message: "hi", org_id: m.orgId }, m);
      assertEquals(results, [
        "403 opt_out",
        "403 opt_out",
        "403 opt_out",
        "429 rate_limit",
        "429 rate_limit",
      ]);
      assertEquals(await bucket(h.sql, `user:${m.userId}`), 3);
    }));

  Deno.test(`authenticated refusals (${store}): a non-member naming an opted-out org is forbidden, and the row names no org [needs DB branch]`, () =>
    withHarness({ store, env: LIMITED }, async (h) => {
      const victim = await h.member();
      const outsider = await h.member();
      await h.sql`insert into public.agent_opt_outs (org_id, reason, created_by)
                  values (${victim.orgId}, 'paused', 'test')`;
      const res = await h.call({ message: "hi", org_id: victim.orgId }, {
        token: outsider.token,
      });
      // opt_out would tell an outsider that this org turned the assistant off.
      const body = await expectError(res, 403, "forbidden");
      const [row] = await h.usageRows(body.error.request_id);
      assertEquals(row!.org_id, null);
      assertEquals((row!.metadata as Meta).requested_org_id, victim.orgId);
    }));

  Deno.test(`authenticated refusals (${store}): a non-member holding a real session id is forbidden (membership first), and writes nothing into that org`, () =>
    withHarness({ store, env: LIMITED }, async (h) => {
      const victim = await h.member();
      const outsider = await h.member();
      const { session_id } = await (await h.call({ message: "secret", org_id: victim.orgId }, {
        token: victim.token,
      })).json();
      const res = await h.call({ message: "hi", org_id: victim.orgId, session_id }, {
        token: outsider.token,
      });
      const body = await expectError(res, 403, "forbidden");
      const [row] = await h.usageRows(body.error.request_id);
      assertEquals(row!.org_id, null);
      const rows = await h.sql`select 1 from public.agent_usage_events
        where org_id = ${victim.orgId} and user_id = ${outsider.userId}`;
      assertEquals(rows.length, 0, "the outsider wrote no row into the victim org's reports");
    }));

  Deno.test(`authenticated refusals (${store}): 50 invalid bodies cost one row (plus one aggregated), no bucket and no begin-turn call`, () =>
    withHarness({ store, env: LIMITED }, async (h) => {
      const m = await h.member();
      const calls = h.gateway.postgrest.calls;
      const bad = [
        "{not json",
        "[]",
        JSON.stringify({ message: "", org_id: m.orgId }),
        JSON.stringify({ message: "hi", org_id: m.orgId, stream: "true" }),
        JSON.stringify({ message: 42, org_id: m.orgId }),
      ];
      for (let i = 0; i < 50; i++) {
        await expectError(
          await h.call(bad[i % bad.length], { token: m.token, ip: m.ip }),
          400,
          "invalid_request",
        );
      }
      assertEquals(h.gateway.postgrest.calls - calls, 1, "one database call: the first row");
      assertEquals(await bucket(h.sql, `user:${m.userId}`), 0);
      assertEquals(await bucket(h.sql, `ip:${m.ip}`), 0);
      const { before, after } = await rowsBeforeAndAfterFlush(h, m.userId);
      assertEquals(before.length, 1);
      assertEquals(after.length, 2);
      assertEquals(after[1]!.error_code, "invalid_request");
      assertEquals((after[1]!.metadata as Meta).first_request_id, after[0]!.request_id);
    }));
}

Deno.test("authenticated refusals: the aggregated row carries event_count [needs DB branch]", () =>
  withHarness({ env: LIMITED }, async (h) => {
    const m = await h.member();
    for (let i = 0; i < 20; i++) {
      await expectError(await h.call("{bad", { token: m.token }), 400, "invalid_request");
    }
    const { after } = await rowsBeforeAndAfterFlush(h, m.userId);
    assertEquals(after.map((r) => r.event_count), [1, 19]);
  }));

Deno.test("authenticated refusals: many accounts from one address cannot write one row per refusal", () =>
  // Sign-ups (or anonymous sign-ins) make accounts cheap: 100 fresh users from
  // one address, each refused once, must not cost 100 usage rows.
  withHarness({ env: { AI_AGENT_REFUSAL_LOG_INTERVAL_SECONDS: "3600" } }, async (h) => {
    const victim = await h.member();
    const ip = testIp();
    const users = Array.from({ length: 100 }, () => crypto.randomUUID());
    const since = new Date(Date.now() - 1000);
    for (const userId of users) {
      const token = await h.auth.userToken(userId);
      await statusOf(await h.call({ message: "hi", org_id: victim.orgId }, { token, ip }));
    }
    const rows = await h.sql`select count(*)::int as n from public.agent_usage_events
      where created_at >= ${since} and user_id = any(${users})`;
    const limit = 30; // AI_AGENT_IP_REFUSAL_LIMIT's default, the bound anonymous callers get
    assert(rows[0]!.n <= limit, `${rows[0]!.n} rows for 100 refusals from one address`);
  }));

// ---------------------------------------------------------------------------
// 8. The same refusals, the same charges and rows, in both session stores
// ---------------------------------------------------------------------------

async function refusalProfile(store: Store) {
  const profile: Record<string, unknown> = {};
  await withHarness({ store, env: LIMITED }, async (h) => {
    const scenarios: Record<string, (h: Harness) => Promise<{ who: Member; body: unknown }>> = {
      forbidden: async (h) => ({
        who: await h.member(),
        body: { message: "hi", org_id: (await h.member()).orgId },
      }),
      session_not_found: async (h) => {
        const owner = await h.member();
        const { session_id } = await (await h.call({ message: "x", org_id: owner.orgId }, {
          token: owner.token,
        })).json();
        return {
          who: await h.member(owner.orgId),
          body: { message: "hi", org_id: owner.orgId, session_id },
        };
      },
      outsider_with_session: async (h) => {
        const owner = await h.member();
        const { session_id } = await (await h.call({ message: "x", org_id: owner.orgId }, {
          token: owner.token,
        })).json();
        return { who: await h.member(), body: { message: "hi", org_id: owner.orgId, session_id } };
      },
      opt_out: async (h) => {
        const m = await h.member();
        await h.sql`insert into public.agent_opt_outs (org_id, user_id, reason, created_by)
                    values (${m.orgId}, ${m.userId}, 'stop', 'test')`;
        return { who: m, body: { message: "hi", org_id: m.orgId } };
      },
      invalid_body: async (h) => {
        const m = await h.member();
        return { who: m, body: { message: "", org_id: m.orgId } };
      },
      user_channel: async (h) => {
        const m = await h.member();
        return { who: m, body: { message: "hi", org_id: m.orgId, channel: "whatsapp" } };
      },
      rate_limit: async (h) => {
        const m = await h.member();
        return { who: m, body: { message: "hi", org_id: m.orgId } };
      },
    };
    for (const [name, setup] of Object.entries(scenarios)) {
      const { who, body } = await setup(h);
      const orgId = (body as { org_id: string }).org_id;
      const results = await repeat(h, 5, body, who);
      const rows = await rowsOfUser(h.sql, who.userId);
      profile[name] = {
        results,
        charged: {
          user: await bucket(h.sql, `user:${who.userId}`),
          org: await bucket(h.sql, `org:${orgId}`) - (name.includes("session") ? 1 : 0),
          ip: await bucket(h.sql, `ip:${who.ip}`),
        },
        rows: rows.map((r) => `${r.error_code ?? "ok"} org:${r.org_id === null ? "null" : "set"}`),
      };
    }
  });
  return profile;
}

Deno.test("both stores: every refusal answers, charges and writes the same", async () => {
  const supabase = await refusalProfile("supabase");
  const redis = await refusalProfile("redis");
  for (const name of Object.keys(supabase)) {
    assertEquals(redis[name], supabase[name], `${name}: redis differs from supabase`);
  }
});

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
      const rows = await waitFor(() => h.usageRows(requestId), (r) => r.length > 0, 8000);
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

// ---------------------------------------------------------------------------
// 5. A client that goes away is client_closed, one row, never openai_error
// ---------------------------------------------------------------------------

/**
 * An OpenAI-compatible upstream that holds its first `hold` answers until
 * `release()` (later requests are answered at once), answers JSON or SSE
 * with usage, and counts the held answers whose caller had already gone.
 */
function gatedUpstream(hold = Infinity) {
  let open!: () => void;
  const gate = new Promise<void>((r) => (open = r));
  const state = { requests: 0, dropped: 0 };
  const server = Deno.serve({ port: 0, hostname: "127.0.0.1", onListen: () => {} }, async (req) => {
    const body = await req.json();
    state.requests++;
    if (state.requests <= hold) {
      req.signal.addEventListener("abort", () => state.dropped++, { once: true });
      await gate;
    }
    const usage = { prompt_tokens: 20, completion_tokens: 2, total_tokens: 22 };
    return completionResponse(body, "late", usage, "chatcmpl-gated");
  });
  return {
    baseURL: `http://127.0.0.1:${server.addr.port}/v1`,
    get requests() {
      return state.requests;
    },
    get dropped() {
      return state.dropped;
    },
    release: () => open(),
    stop: () => server.shutdown(),
  };
}

/** Runs `fn` with a gated upstream as the harness's OpenAI; always released and stopped. */
async function withGatedUpstream(
  hold: number,
  fn: (upstream: ReturnType<typeof gatedUpstream>) => Promise<void>,
) {
  const upstream = gatedUpstream(hold);
  try {
    await fn(upstream);
  } finally {
    upstream.release();
    await upstream.stop();
  }
}

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

// ---------------------------------------------------------------------------
// 6. Channels
// ---------------------------------------------------------------------------

Deno.test("channels: a user token may use only AI_AGENT_USER_CHANNELS; a service caller any valid channel", async () => {
  await withHarness({}, async (h) => {
    const m = await h.member();
    for (const channel of [undefined, "app", "web"]) {
      const res = await h.call({ message: "hi", org_id: m.orgId, channel }, { token: m.token });
      assertEquals(await statusOf(res), 200, `user on ${channel ?? "default"}`);
    }
    for (const channel of ["whatsapp", "sms", "ussd", "internal"]) {
      const res = await h.call({ message: "hi", org_id: m.orgId, channel }, { token: m.token });
      await expectError(res, 403, "forbidden");
    }
    for (const channel of ["whatsapp", "sms", "ussd"]) {
      const res = await h.call({ message: "hi", org_id: m.orgId, channel, user_id: m.userId }, {
        token: h.secretKey,
      });
      assertEquals(await statusOf(res), 200, `service on ${channel}`);
    }
    for (const channel of ["SMS", "WhatsApp", "", " app", "app\n", "a".repeat(33)]) {
      const body = { message: "hi", org_id: m.orgId, channel, user_id: m.userId };
      await expectError(await h.call(body, { token: h.secretKey }), 400, "invalid_request");
    }
    const rows = await h.sql`select channel, count(*)::int as n from public.agent_usage_events
      where user_id = ${m.userId} and success group by channel order by channel`;
    assertEquals(rows.map((r) => r.channel), ["app", "sms", "ussd", "web", "whatsapp"]);
  });
  await withHarness({ env: { AI_AGENT_USER_CHANNELS: "app,ussd" } }, async (h) => {
    const m = await h.member();
    await expectError(
      await h.call({ message: "hi", org_id: m.orgId, channel: "web" }, { token: m.token }),
      403,
      "forbidden",
    );
    const ok = await h.call({ message: "hi", org_id: m.orgId, channel: "ussd" }, {
      token: m.token,
    });
    assertEquals(await statusOf(ok), 200);
  });
});

Deno.test("channels: an opt-out row with channel 'SMS' (or any non-channel) is impossible [needs DB branch]", () =>
  withDb(async (sql) => {
    const org = crypto.randomUUID();
    const accepted: string[] = [];
    try {
      for (const channel of ["SMS", "WhatsApp", "", "app ", "web\n"]) {
        try {
          await sql`insert into public.agent_opt_outs (org_id, channel, reason, created_by)
                    values (${org}, ${channel}, 'test', 'test')`;
          accepted.push(channel);
        } catch (error) {
          assertEquals((error as { code?: string }).code, "23514", "a check_violation");
        }
      }
      // Such a row would never match a request's (lowercase) channel: a silent no-op opt-out.
      assertEquals(accepted, [], "opt-out channels that no request can carry were accepted");
    } finally {
      await sql`delete from public.agent_opt_outs where org_id = ${org}`;
    }
  }));

// ---------------------------------------------------------------------------
// 7. Tokens and request ids
// ---------------------------------------------------------------------------

Deno.test("tokens: no exp, another issuer, no sub, a non-UUID sub, anon role, or alg confusion are 401", () =>
  withHarness({}, async (h) => {
    const m = await h.member();
    const s = h.auth.jwtSecret;
    const good = { sub: m.userId, aud: "authenticated", role: "authenticated", iss: h.auth.issuer };
    const control = await hs256(s, good, inAnHour());
    assertEquals(
      await statusOf(await h.call({ message: "hi", org_id: m.orgId }, { token: control })),
      200,
      "the control token is accepted",
    );
    const jwk = h.auth.jwks.keys[0]!;
    const tokens: Record<string, string> = {
      "no exp": await hs256(s, good),
      "other issuer": await hs256(s, { ...good, iss: "https://evil.example/auth/v1" }, inAnHour()),
      "no issuer": await hs256(
        s,
        { sub: m.userId, aud: "authenticated", role: "authenticated" },
        inAnHour(),
      ),
      "no sub": await hs256(s, { ...good, sub: undefined }, inAnHour()),
      "sub not a uuid": await hs256(s, { ...good, sub: "admin" }, inAnHour()),
      "anon role": await hs256(s, { ...good, role: "anon" }, inAnHour()),
      "exp as a string": await hs256(s, { ...good, exp: String(inAnHour()) }),
      "not yet valid": await hs256(s, { ...good, nbf: inAnHour() }, inAnHour() + 60),
      "HS256 keyed with the public JWK": await hs256(JSON.stringify(jwk), good, inAnHour()),
      "HS256 keyed with the public x": await hs256(String(jwk.x), good, inAnHour()),
    };
    for (const [name, token] of Object.entries(tokens)) {
      const res = await h.call({ message: "hi", org_id: m.orgId }, { token });
      assertEquals(res.status, 401, name);
      assertEquals((await res.json()).error.code, "unauthorized", name);
    }
  }));

Deno.test("tokens: without SUPABASE_JWT_ISSUER the issuer must be SUPABASE_URL/auth/v1", () =>
  withHarness({ env: { SUPABASE_JWT_ISSUER: "" } }, async (h) => {
    const m = await h.member();
    const claims = { sub: m.userId, aud: "authenticated", role: "authenticated" };
    const ours = await hs256(
      h.auth.jwtSecret,
      { ...claims, iss: `${h.gateway.url}/auth/v1` },
      inAnHour(),
    );
    assertEquals(
      await statusOf(await h.call({ message: "hi", org_id: m.orgId }, { token: ours })),
      200,
    );
    // The stand-in's tokens name another project's Auth URL.
    await expectError(
      await h.call({ message: "hi", org_id: m.orgId }, { token: m.token }),
      401,
      "unauthorized",
    );
    const lookalike = await hs256(h.auth.jwtSecret, {
      ...claims,
      iss: `${h.gateway.url}/auth/v1/`,
    }, inAnHour());
    await expectError(
      await h.call({ message: "hi", org_id: m.orgId }, { token: lookalike }),
      401,
      "unauthorized",
    );
  }));

Deno.test("request ids: the stored and returned x-request-id is the server's; a sane client id is echoed and kept", () =>
  withHarness({ env: { AI_AGENT_REFUSAL_LOG_INTERVAL_SECONDS: "3600" } }, async (h) => {
    const m = await h.member();
    const clientId = "client-req-0001";
    const ids: string[] = [];
    for (let i = 0; i < 2; i++) {
      const res = await h.call({ message: "hi", org_id: m.orgId }, {
        token: m.token,
        headers: { "x-request-id": clientId },
      });
      const body = await res.json();
      assertEquals(res.status, 200);
      const serverId = res.headers.get("x-request-id")!;
      assertMatch(serverId, /^[0-9a-f-]{36}$/);
      assert(serverId !== clientId);
      assertEquals(res.headers.get("x-client-request-id"), clientId);
      assertEquals(body.request_id, serverId);
      const rows = await h.usageRows(serverId);
      assertEquals(rows.length, 1);
      assertEquals((rows[0]!.metadata as Meta).client_request_id, clientId);
      ids.push(serverId);
    }
    assert(ids[0] !== ids[1], "the same client id twice still gets two server ids");
    const byClient = await h.usageRows(clientId);
    assertEquals(byClient.length, 0, "the client's id is never the stored request_id");
    // A refusal too: the error body's request_id is the server's.
    const refused = await h.call({ message: "", org_id: m.orgId }, {
      token: m.token,
      headers: { "x-request-id": clientId },
    });
    const err = await expectError(refused, 400, "invalid_request");
    assert(err.error.request_id !== clientId);
    assertEquals(refused.headers.get("x-client-request-id"), clientId);
    // Insane client ids are neither echoed nor stored.
    for (
      const bad of [
        "short",
        "x".repeat(129),
        "has space in it",
        "<script>alert(1)</script>",
        "a;b=c,d/e",
      ]
    ) {
      const res = await h.call({ message: "hi", org_id: m.orgId }, {
        token: m.token,
        headers: { "x-request-id": bad },
      });
      const body = await res.json();
      assertEquals(res.headers.get("x-client-request-id"), null, bad);
      const [row] = await h.usageRows(body.request_id);
      assertEquals((row!.metadata as Meta).client_request_id, undefined, bad);
    }
  }));

// ---------------------------------------------------------------------------
// Beyond the list: headers, lying lengths, odd JSON
// ---------------------------------------------------------------------------

Deno.test("headers: huge Authorization and X-Forwarded-For are refused cheaply; CRLF cannot reach a response header", () =>
  withHarness({ env: { AI_AGENT_REFUSAL_LOG_INTERVAL_SECONDS: "3600" } }, async (h) => {
    const m = await h.member();
    const calls = h.gateway.postgrest.calls;
    const huge = await h.call({ message: "hi", org_id: m.orgId }, {
      token: "A".repeat(30_000),
      ip: testIp(),
    });
    await expectError(huge, 401, "unauthorized");
    const dotted = await h.call({ message: "hi", org_id: m.orgId }, {
      token: `${"e30".repeat(5000)}.${"e30".repeat(5000)}.sig`,
      ip: testIp(),
    });
    await expectError(dotted, 401, "unauthorized");
    assertEquals(h.gateway.postgrest.calls, calls);
    // 4,000 forged hops in front of the trusted ones: only the trusted hop counts.
    const chain = Array.from({ length: 4000 }, (_, i) => `6.6.${i >> 8}.${i & 255}`).join(", ");
    const res = await h.call({ message: "hi", org_id: m.orgId }, {
      token: m.token,
      ip: `${chain}, 10.66.0.1`,
    });
    const body = await res.json();
    assertEquals(res.status, 200);
    const [row] = await h.usageRows(body.request_id);
    assertEquals((row!.metadata as Meta).client_ip, "10.66.0.1");
    // Raw header bytes: a CR/LF smuggled in x-request-id is not reflected as a header.
    const raw = await rawHttp(h.gateway.port, [
      rawHead({
        token: m.token,
        ip: m.ip,
        contentLength: 0,
        extra: { "x-request-id": "abcdefgh\rset-cookie: pwned=1" },
      }),
    ]);
    assert(raw === undefined || raw.headers["set-cookie"] === undefined);
    assert(raw === undefined || raw.status === 400, `status ${raw?.status}`);
  }));

Deno.test("CORS: a configured origin list never reflects an unknown origin", () =>
  withHarness(
    { env: { AI_AGENT_ALLOWED_ORIGINS: "https://app.example,https://web.example" } },
    async (h) => {
      for (const origin of ["https://evil.example", "null", "https://app.example.evil.example"]) {
        const pre = await fetch(h.url, { method: "OPTIONS", headers: { origin } });
        await pre.body?.cancel();
        assertEquals(pre.headers.get("access-control-allow-origin"), "https://app.example", origin);
        assertEquals(pre.headers.get("access-control-allow-credentials"), null);
      }
      const ok = await fetch(h.url, {
        method: "OPTIONS",
        headers: { origin: "https://web.example" },
      });
      await ok.body?.cancel();
      assertEquals(ok.headers.get("access-control-allow-origin"), "https://web.example");
    },
  ));

Deno.test("Content-Length: lies and huge declarations are 400 at once; a chunked body over the limit is cut off", () =>
  withHarness({ env: { AI_AGENT_BODY_TIMEOUT_MS: "5000" } }, async (h) => {
    const m = await h.member();
    // Declares 100 MB: refused on the header alone, before a byte is read.
    const declared = await rawHttp(h.gateway.port, [
      rawHead({ token: m.token, ip: m.ip, contentLength: 100_000_000 }),
      { delayMs: 6000 },
    ], 4000);
    assert(declared, "answered before the body");
    assertEquals(declared.status, 400);
    assert(declared.ms < 2000, `${Math.round(declared.ms)} ms`);
    // Declares 20 bytes, sends a whole valid body: only the declared bytes are the body.
    const text = JSON.stringify({ message: "hi", org_id: m.orgId });
    const short = await rawHttp(h.gateway.port, [
      rawHead({ token: m.token, ip: m.ip, contentLength: 20 }) + text,
    ]);
    assert(short);
    assertEquals(short.status, 400);
    assertEquals(JSON.parse(short.body).error.code, "invalid_request");
    // Chunked, 5 × 10,000 bytes against a 32,768-byte limit.
    const parts: Part[] = [
      rawHead({ token: m.token, ip: m.ip, chunked: true }),
      chunk(`{"message":"`),
    ];
    for (let i = 0; i < 5; i++) parts.push(chunk("x".repeat(10_000)));
    parts.push(chunk(`","org_id":"${m.orgId}"}`), "0\r\n\r\n");
    const big = await rawHttp(h.gateway.port, parts);
    assert(big);
    assertEquals(big.status, 400);
    assertMatch(JSON.parse(big.body).error.message, /at most 32768 bytes/);
    assertEquals(h.openai.requests.length, 0);
    assertEquals(await bucket(h.sql, `user:${m.userId}`), 0);
  }));

Deno.test("JSON: duplicate keys, numbers as strings, nulls and wrong types are handled, never a 500", () =>
  withHarness({}, async (h) => {
    const m = await h.member();
    const outsider = await h.member();
    const o = m.orgId;
    // Duplicate keys: the last wins everywhere (parse, admission, row), so the
    // org that is checked is the org that is recorded.
    const dup = await h.call(
      `{"message":"first","message":"second","org_id":"${outsider.orgId}","org_id":"${o}"}`,
      { token: m.token },
    );
    const body = await dup.json();
    assertEquals(dup.status, 200);
    assertEquals(h.openai.requests.at(-1)!.body.messages.at(-1)!.content, "second");
    const [row] = await h.usageRows(body.request_id);
    assertEquals(row!.org_id, o);
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
      await expectError(await h.call(text, { token: m.token }), 400, "invalid_request");
    }
    const rows = await h.sql`select 1 from public.agent_usage_events
      where user_id = ${m.userId} and error_code = 'internal_error'`;
    assertEquals(rows.length, 0);
  }));

Deno.test("JSON: __proto__ and constructor keys pollute nothing and are not a 500", () =>
  withHarness({}, async (h) => {
    const m = await h.member();
    const o = m.orgId;
    const top = await h.call(`{"message":"hi","org_id":"${o}","__proto__":{"admin":true}}`, {
      token: m.token,
    });
    await expectError(top, 400, "invalid_request");
    const meta = await h.call(
      `{"message":"hi","org_id":"${o}","metadata":{"__proto__":{"polluted":"yes"},"constructor":{"prototype":{"polluted":"yes"}},"k":1}}`,
      { token: m.token },
    );
    const status = meta.status;
    const text = await meta.text();
    assert(status === 200 || status === 400, `status ${status}: ${text}`);
    assertEquals(({} as Record<string, unknown>).polluted, undefined, "Object.prototype untouched");
    assertEquals(({} as Record<string, unknown>).admin, undefined);
    if (status === 200) {
      const [row] = await h.usageRows(JSON.parse(text).request_id);
      const client = (row!.metadata as Meta).client as Meta;
      assertEquals(client.k, 1);
      assertEquals(Object.getPrototypeOf(client), Object.prototype);
    }
  }));

Deno.test("JSON: deeply nested bodies are 400 invalid_request, not 500 internal_error", () =>
  withHarness({ env: { AI_AGENT_REFUSAL_LOG_INTERVAL_SECONDS: "3600" } }, async (h) => {
    const m = await h.member();
    const depth = 8000; // 16 KB of brackets, well under the 32 KB body limit
    const nested = "[".repeat(depth) + "]".repeat(depth);
    for (
      const text of [
        `{"message":"hi","org_id":"${m.orgId}","metadata":{"a":${nested}}}`,
        `{"message":${nested},"org_id":"${m.orgId}"}`,
        `{"message":"hi","org_id":"${m.orgId}","x":${'{"a":'.repeat(4000)}1${"}".repeat(4000)}}`,
      ]
    ) {
      const res = await h.call(text, { token: m.token, ip: m.ip });
      await expectError(res, 400, "invalid_request");
    }
    // A 500 counts against the success rate that pages the operators.
    const errors = h.logs.filter((l) => l.event === "request" && l.level === "error");
    assertEquals(errors.length, 0, "no error-level log line from a client's body");
    // Nesting that fits the metadata limit is stored or refused, never a 500.
    const fits = await h.call(
      `{"message":"hi","org_id":"${m.orgId}","metadata":{"a":${"[".repeat(900)}${
        "]".repeat(900)
      }}}`,
      { token: m.token, ip: m.ip },
    );
    assert([200, 400].includes(await statusOf(fits)), `status ${fits.status}`);
  }));
