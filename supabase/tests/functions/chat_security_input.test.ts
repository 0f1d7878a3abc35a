/**
 * agent-chat's security controls, attacked end to end: hostile headers and
 * lying lengths over raw HTTP/1.1.
 *
 * Waits are bounded polls on an observable (a row, a log line, a recorded
 * upstream request), never a bare sleep that a slow machine could lose.
 */
import { assert, assertEquals, assertMatch } from "./assert.ts";
import { expectError, withHarness } from "../support/test-helpers.ts";
import { type Part, rawHttp } from "../support/raw-http.ts";
import { bucket, chunk, type Meta, rawHead, testIp } from "../support/attack.ts";

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
