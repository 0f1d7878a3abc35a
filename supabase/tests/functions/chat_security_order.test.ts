/**
 * agent-chat's security controls, attacked end to end (real HTTP to the function
 * behind the gateway stand-in, real Postgres and Redis): the order of the steps.
 * Method, then authentication from the headers alone, then the body (bounded
 * in time), then admission: nothing of an anonymous body is read or stored.
 *
 * Waits are bounded polls on an observable (a row, a log line, a recorded
 * upstream request), never a bare sleep that a slow machine could lose.
 */
import { assert, assertEquals } from "./assert.ts";
import { expectError, withDb, withHarness } from "../support/test-helpers.ts";
import { type Part, rawHttp } from "../support/raw-http.ts";
import { bucket, chunk, rawHead, testIp } from "../support/attack.ts";

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
