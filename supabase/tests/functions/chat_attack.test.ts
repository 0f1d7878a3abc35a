/**
 * Hostile tests of issue 9 (caller-proof controls) and the Idempotency-Key
 * feature, written by an attacker's hand: real HTTP to the function behind
 * the gateway stand-in, real Postgres and Redis.
 *
 * Every test asserts the behaviour the README and docs/operations.md
 * (Security) promise; each one failed against the code it was written for
 * (outsiders' rows, the idempotency hash, IPv4-mapped and IPv6 address
 * blocks, unknown addresses, unstorable model text, free 409/422s) until
 * that was fixed. "held: …" tests are attacks the defences withstood.
 *
 * The harness trusts two proxy hops (a CDN in front of the gateway): the
 * address a test passes as `ip` is what the CDN wrote, the gateway appends
 * its own peer.
 */
import postgres from "postgres";
import { generateKeyPair, SignJWT } from "jose";
import { assert, assertEquals } from "./assert.ts";
import type { Harness, Member } from "../support/function-harness.ts";
import { expectError, statusOf, withDb, withHarness } from "../support/test-helpers.ts";

type Row = Record<string, unknown>;
type Meta = Record<string, unknown>;
const STORES = ["supabase", "redis"] as const;

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

async function bucket(sql: postgres.Sql, key: string): Promise<number> {
  const rows = await sql`select slot_total from ops.rate_limits where bucket_key = ${key}`;
  return Number(rows[0]?.slot_total ?? 0);
}

const byte = () => Math.floor(Math.random() * 250) + 1;
const hex16 = () => Math.floor(Math.random() * 0xfffe + 1).toString(16);

/** A per-test IPv4 address in 198.18.0.0/15 (benchmark range). */
function testIp(): string {
  return `198.18.${byte()}.${byte()}`;
}

function keyed(h: Harness, m: Member, body: unknown, key: string): Promise<Response> {
  return h.call(body, { token: m.token, ip: m.ip, headers: { "idempotency-key": key } });
}

const inAnHour = () => Math.floor(Date.now() / 1000) + 3600;

// ---------------------------------------------------------------------------
// Defect A: a refused outsider can still put rows into another tenant's
// reports. The Security section promises "A refused outsider's row never
// carries the org they named in `org_id`"; two refusals decided before
// membership (a malformed Idempotency-Key, and idempotency_mismatch, which the
// key check decides before membership) keep the named org.
// ---------------------------------------------------------------------------

async function victimRows(sql: postgres.Sql, orgId: string, userId: string): Promise<Row[]> {
  return await sql`select * from public.agent_usage_events
    where user_id = ${userId} and (org_id = ${orgId} or metadata->>'requested_org_id' = ${orgId})
    order by id`;
}

for (const store of STORES) {
  Deno.test(`outsiders (${store}): a malformed Idempotency-Key (400) writes no row into the org it named`, () =>
    withHarness({ store, env: { AI_AGENT_REFUSAL_LOG_INTERVAL_SECONDS: "3600" } }, async (h) => {
      const victim = await h.member();
      const outsider = await h.member();
      for (let i = 0; i < 5; i++) {
        await expectError(
          await keyed(h, outsider, { message: "hi", org_id: victim.orgId }, ""),
          400,
          "invalid_request",
        );
      }
      await h.stop();
      const rows = await withDb((sql) => victimRows(sql, victim.orgId, outsider.userId));
      assert(rows.length > 0, "the refusal is recorded");
      for (const row of rows) {
        assertEquals(row.org_id, null, "a refused outsider's row must not name the org");
      }
    }));

  Deno.test(`outsiders (${store}): an idempotency_mismatch (422) writes no row into the org it named`, () =>
    withHarness({ store, env: { AI_AGENT_REFUSAL_LOG_INTERVAL_SECONDS: "3600" } }, async (h) => {
      const victim = await h.member();
      const outsider = await h.member();
      // A legitimate keyed turn in the outsider's own org…
      const own = await keyed(h, outsider, { message: "hi", org_id: outsider.orgId }, "k-1");
      assertEquals(await statusOf(own), 200);
      // …then the same key naming the victim's org: decided before membership.
      for (let i = 0; i < 5; i++) {
        await expectError(
          await keyed(h, outsider, { message: "hi", org_id: victim.orgId }, "k-1"),
          422,
          "idempotency_mismatch",
        );
      }
      assertEquals(await bucket(h.sql, `org:${victim.orgId}`), 0, "the victim org pays nothing");
      await h.stop();
      const rows = await withDb((sql) => victimRows(sql, victim.orgId, outsider.userId));
      assert(rows.length > 0, "the refusal is recorded");
      for (const row of rows) {
        assertEquals(row.org_id, null, "a refused outsider's row must not name the org");
        assertEquals((row.metadata as Meta).requested_org_id, victim.orgId);
      }
      const report = await withDb((sql) =>
        sql`select coalesce(sum(requests), 0)::int as requests
            from ops.usage_report(now() - interval '1 hour', now() + interval '1 minute', null, ${victim.orgId})`
      );
      assertEquals(report[0]!.requests, 0, "the victim org's usage report is untouched");
    }));
}

// ---------------------------------------------------------------------------
// Defect B: the Idempotency-Key request hash is not injective. Objects are
// canonicalised to arrays of [key, value] pairs, so metadata {x: {a: 1}} and
// {x: [["a", 1]]} hash the same: a different request is replayed instead of
// 422 idempotency_mismatch.
// ---------------------------------------------------------------------------

Deno.test("idempotency: metadata {x:{a:1}} and {x:[[a,1]]} are different requests (422, not a replay)", () =>
  withHarness({}, async (h) => {
    const m = await h.member();
    const first = await keyed(h, m, {
      message: "hi",
      org_id: m.orgId,
      metadata: { x: { a: 1 } },
    }, "hash-1");
    assertEquals(await statusOf(first), 200);
    const other = await keyed(h, m, {
      message: "hi",
      org_id: m.orgId,
      metadata: { x: [["a", 1]] },
    }, "hash-1");
    const text = await other.text();
    assertEquals(other.headers.get("idempotent-replayed"), null, "not a replay: " + text);
    assertEquals(other.status, 422, text);
    assertEquals(JSON.parse(text).error.code, "idempotency_mismatch");
    const empty = await keyed(h, m, { message: "hi", org_id: m.orgId, metadata: { e: {} } }, "h2");
    assertEquals(await statusOf(empty), 200);
    const list = await keyed(h, m, { message: "hi", org_id: m.orgId, metadata: { e: [] } }, "h2");
    assertEquals(list.status, 422, "{} and [] are different requests");
    await list.body?.cancel();
  }));

// ---------------------------------------------------------------------------
// Defect C: address blocks. normalizeIp() canonicalises an IPv4-mapped IPv6
// address through URL parsing to its hex form (::ffff:102:304), so
// addressBlock()'s ::ffff:a.b.c.d rule never matches: every IPv4-mapped
// client lands in the one block "0:0:0:0::/64". A dual-stack proxy (or
// AI_AGENT_TRUSTED_PROXY_HOPS=0 on a dual-stack listener) reports every IPv4
// client that way, so one flooder locks out every IPv4 client, and the
// mapped and dotted forms of one address are two blocks.
// ---------------------------------------------------------------------------

Deno.test("address blocks: one IPv4-mapped client's anonymous flood does not 429 other IPv4-mapped clients", () =>
  withHarness({ env: { AI_AGENT_REFUSAL_LOG_INTERVAL_SECONDS: "3600" } }, async (h) => {
    const attacker = `::ffff:198.18.${byte()}.${byte()}`;
    const statuses: number[] = [];
    for (let i = 0; i < 31; i++) {
      statuses.push(await statusOf(await h.call({ message: "x" }, { ip: attacker })));
    }
    assertEquals(statuses.filter((s) => s === 429).length, 1, "the attacker: 429 from the 31st");
    const m = await h.member();
    const bystander = `::ffff:198.19.${byte()}.${byte()}`;
    const res = await h.call({ message: "hi", org_id: m.orgId }, { token: m.token, ip: bystander });
    assertEquals(await statusOf(res), 200, "another IPv4 address is another block");
  }));

Deno.test("address blocks: the IPv4-mapped form of an address shares the flood limit of its dotted form", () =>
  withHarness({ env: { AI_AGENT_REFUSAL_LOG_INTERVAL_SECONDS: "3600" } }, async (h) => {
    const ip = testIp();
    for (let i = 0; i < 30; i++) await statusOf(await h.call({ message: "x" }, { ip }));
    assertEquals(await statusOf(await h.call({ message: "x" }, { ip })), 429);
    const mapped = await h.call({ message: "x" }, { ip: `::ffff:${ip}` });
    assertEquals(await statusOf(mapped), 429, "::ffff:a.b.c.d is the same client as a.b.c.d");
  }));

// ---------------------------------------------------------------------------
// Defect D: the ip: bucket is keyed by the full IPv6 address. The docs
// group addresses by block ("one subscriber holds a whole /64") for the
// flood limiter and the refusal rows, but the ip: rate-limit bucket of
// admitted turns is per address: one IPv6 subscriber with many (cheap)
// accounts rotates the interface id and never meets the ip: limit.
// ---------------------------------------------------------------------------

Deno.test("address blocks: rotating the interface id within one IPv6 /64 does not escape the ip: bucket", () =>
  withHarness({ env: { AI_AGENT_RATE_LIMIT_IP_MAX_REQUESTS: "3" } }, async (h) => {
    const org = crypto.randomUUID();
    // Control: five accounts behind one IPv4 address meet the ip: limit.
    const ip = testIp();
    const v4: string[] = [];
    for (let i = 0; i < 5; i++) {
      const m = await h.member(org);
      const res = await h.call({ message: "hi", org_id: org }, { token: m.token, ip });
      v4.push(`${res.status}`);
      await res.body?.cancel();
    }
    assertEquals(v4, ["200", "200", "200", "429", "429"], "control: IPv4");
    // The same from one /64, one interface id per account.
    const prefix = `2001:db8:${hex16()}:${hex16()}`;
    const v6: string[] = [];
    for (let i = 0; i < 5; i++) {
      const m = await h.member(org);
      const res = await h.call({ message: "hi", org_id: org }, {
        token: m.token,
        ip: `${prefix}:${hex16()}:${hex16()}:${hex16()}:${i + 1}`,
      });
      v6.push(`${res.status}`);
      await res.body?.cancel();
    }
    assertEquals(v6, ["200", "200", "200", "429", "429"], "one /64 is one subscriber");
  }));

// ---------------------------------------------------------------------------
// Defect E: an unknown client address lifts the per-address bound on
// refusal rows. With two trusted hops, a caller that reaches the gateway
// without the CDN (its URL is public) sends no X-Forwarded-For: the address
// is "unknown", and unknown is exempt from the per-block first-row
// allowance, so every fresh account writes its own row. The Security
// section promises at most AI_AGENT_IP_REFUSAL_LIMIT first rows per address,
// "however many accounts it uses".
// ---------------------------------------------------------------------------

Deno.test("address blocks: many accounts with an unknown address share one refusal-row allowance", () =>
  withHarness({ env: { AI_AGENT_REFUSAL_LOG_INTERVAL_SECONDS: "3600" } }, async (h) => {
    const victim = await h.member();
    const users = Array.from({ length: 60 }, () => crypto.randomUUID());
    const since = new Date(Date.now() - 1000);
    for (const userId of users) {
      const token = await h.auth.userToken(userId);
      // No X-Forwarded-For from the client: only the gateway's own entry.
      const res = await fetch(h.url, {
        method: "POST",
        headers: { "content-type": "application/json", authorization: `Bearer ${token}` },
        body: JSON.stringify({ message: "hi", org_id: victim.orgId }),
      });
      assertEquals(await statusOf(res), 403);
    }
    const rows = await h.sql`select count(*)::int as n from public.agent_usage_events
      where created_at >= ${since} and user_id = any(${users})`;
    assert(rows[0]!.n <= 30, `${rows[0]!.n} rows for 60 refusals from one (unknown) address`);
  }));

// ---------------------------------------------------------------------------
// Defect F: text the model sends back is not made storable before it is
// written as JSON. An OpenAI-compatible upstream (OPENAI_BASE_URL) that
// answers with an unpaired surrogate escape ("\ud83d" is valid JSON) puts it
// in the Idempotency-Key settlement (the stored answer) that the Supabase
// store sends inside agent_finish_turn's p_usage jsonb, unsanitised
// (usage.ts sanitises only its own insert): Postgres refuses the jsonb, the
// save fails, the caller gets 503 session_store_error (a *served* failure,
// counted against the success rate), the answer is lost and the key is
// released, while the Redis store answers 200. (Real PostgREST decodes every
// argument from the JSON body, so there the plain text arguments fail too;
// the stand-in binds text arguments as UTF-8, which hides that.)
// ---------------------------------------------------------------------------

for (const store of STORES) {
  for (const transport of ["rpc", "postgres"] as const) {
    Deno.test(`model text (${store}, ${transport}, Idempotency-Key): an answer holding an unpaired surrogate is stored and answered 200, metered once`, () =>
      withHarness({ store, transport }, async (h) => {
        const m = await h.member();
        h.openai.script({ kind: "reply", text: "half an emoji: \ud83d" });
        const res = await keyed(h, m, { message: "hi", org_id: m.orgId }, "surrogate-1");
        const text = await res.text();
        const requestId = res.headers.get("x-request-id")!;
        const rows = await h.usageRows(requestId);
        assertEquals(rows.length, 1, "one usage row");
        assert(Number(rows[0]!.total_tokens) > 0, "with the tokens");
        assertEquals(res.status, 200, text);
        const { session_id } = JSON.parse(text);
        const next = await h.call({ message: "again", org_id: m.orgId, session_id }, {
          token: m.token,
          ip: m.ip,
        });
        assertEquals(await statusOf(next), 200);
        const sent = h.openai.requests.at(-1)!.body.messages.filter((x) => x.role !== "system");
        assertEquals(sent.length, 3, "the first turn was stored");
        const replay = await keyed(h, m, { message: "hi", org_id: m.orgId }, "surrogate-1");
        assertEquals(replay.headers.get("idempotent-replayed"), "true", "the key kept the answer");
        await replay.body?.cancel();
      }));
  }
}

// ---------------------------------------------------------------------------
// Defect G: refusals decided by the Idempotency-Key check are never limited.
// DESIGN.md: "Refusals of an authenticated caller are limited too"; the
// Security section charges every refusal decided by the database a user:
// slot so "refusals cannot outrun the user limit". 422 idempotency_mismatch
// (and 409 request_in_progress) are decided by the same begin-turn call but
// charge nothing: a user past the user limit keeps the database answering
// begin-turn calls without end (each takes an advisory lock), and a stolen
// token cannot be throttled.
// ---------------------------------------------------------------------------

Deno.test("idempotency: idempotency_mismatch refusals count against the user limit", () =>
  withHarness({
    env: {
      AI_AGENT_RATE_LIMIT_USER_MAX_REQUESTS: "3",
      AI_AGENT_REFUSAL_LOG_INTERVAL_SECONDS: "3600",
    },
  }, async (h) => {
    const m = await h.member();
    assertEquals(await statusOf(await keyed(h, m, { message: "a", org_id: m.orgId }, "g-1")), 200);
    const calls = h.gateway.postgrest.calls;
    const statuses: number[] = [];
    for (let i = 0; i < 20; i++) {
      statuses.push(
        await statusOf(await keyed(h, m, { message: `b${i}`, org_id: m.orgId }, "g-1")),
      );
    }
    const beginTurns = h.gateway.postgrest.calls - calls;
    const answered = statuses.filter((s) => s === 422).length;
    assert(
      answered <= 3,
      `${answered} of 20 mismatches answered 422 with a user limit of 3 (${beginTurns} database calls)`,
    );
  }));

// ---------------------------------------------------------------------------
// Held: direct SQL as anon and authenticated (what a leaked anon key or a
// user's own token can reach through PostgREST).
// ---------------------------------------------------------------------------

Deno.test("held: anon and authenticated reach no table, sequence or function beyond their own sessions", () =>
  withHarness({}, async (h) => {
    const owner = await h.member();
    const other = await h.member(owner.orgId);
    const answered = await h.call({ message: "secret", org_id: owner.orgId }, {
      token: owner.token,
    });
    const { session_id } = await answered.json();
    const attempts: Record<string, string> = {
      "read usage": "select * from public.agent_usage_events limit 1",
      "insert usage":
        "insert into public.agent_usage_events (request_id, success) values ('x', true)",
      "read opt-outs": "select * from public.agent_opt_outs limit 1",
      "add opt-out": `insert into public.agent_opt_outs (org_id) values ('${owner.orgId}')`,
      "join an org":
        `insert into public.org_memberships (org_id, user_id, role) values ('${owner.orgId}', '${other.userId}', 'admin')`,
      "setval usage seq": "select setval('public.agent_usage_events_id_seq', 2147483647)",
      "nextval messages seq": "select nextval('public.agent_session_messages_id_seq')",
      "write a message":
        `insert into public.agent_session_messages (session_id, role, content) values ('${session_id}', 'assistant', 'x')`,
      "update a session":
        `update public.agent_sessions set user_id = user_id where id = '${session_id}'`,
      "rate limits": "select * from ops.rate_limits limit 1",
      "clear a bucket": `select ops.clear_rate_limit('user:${other.userId}')`,
      "idempotency keys": "select * from ops.idempotency_keys limit 1",
      "begin turn":
        `select public.agent_begin_turn('${owner.orgId}'::uuid, '${other.userId}'::uuid)`,
      "log usage": `select public.agent_log_usage('{"request_id":"x"}'::jsonb)`,
      "settle a key": `select public.agent_settle_usage('{}'::jsonb)`,
      "finish turn":
        `select public.agent_end_turn('${session_id}'::uuid, '${owner.orgId}'::uuid, '${other.userId}'::uuid, 'app', 'a', 'b')`,
      "usage report": "select * from ops.usage_report(now() - interval '1 day', now())",
      "health view": "select * from ops.health_15m",
      "purge": "select ops.purge_expired()",
      // Members' data: only operators erase or export, and opt-outs are history.
      "erase another member": `select ops.forget_user('${owner.userId}', 'attacker')`,
      "erase oneself": `select ops.forget_user('${other.userId}', 'me')`,
      "export another member": `select ops.export_user('${owner.userId}')`,
      "complete a Redis erasure": "select ops.redis_erasure_done(1, 0)",
      "shorten retention": `select ops.retention_set('{"usage_row_months": 1}')`,
      "read erasures": "select * from ops.member_erasures",
      "delete an opt-out": "delete from public.agent_opt_outs",
      "read the opt-out audit": "select * from ops.opt_out_audit",
    };
    for (const role of ["anon", "authenticated"]) {
      for (const [name, statement] of Object.entries(attempts)) {
        let error: string | undefined;
        try {
          await h.sql.begin(async (tx) => {
            await tx.unsafe(`set local role ${role}`);
            await tx`select set_config('request.jwt.claims', ${
              JSON.stringify({ sub: other.userId, role })
            }, true)`;
            await tx.unsafe(statement);
            // Whatever it did, undo it: the test only wants to know if it was allowed.
            throw Object.assign(new Error("allowed"), { code: "allowed" });
          });
        } catch (e) {
          error = (e as { code?: string }).code;
        }
        if (error === "allowed") error = undefined;
        assert(
          error === "42501" || error === "3F000",
          `${role}: ${name} must be refused (got ${error ?? "success"})`,
        );
      }
      // Reads RLS allows: nothing of another user's session.
      const peek = await h.sql.begin(async (tx) => {
        await tx.unsafe(`set local role ${role}`);
        await tx`select set_config('request.jwt.claims', ${
          JSON.stringify({ sub: other.userId, role })
        }, true)`;
        if (role === "anon") return [];
        return await tx`select m.content from public.agent_session_messages m
                        join public.agent_sessions s on s.id = m.session_id
                        where s.id = ${session_id}`;
      });
      assertEquals(peek.length, 0, `${role} reads no other user's messages`);
    }
  }));

// ---------------------------------------------------------------------------
// Held: JWT tricks beyond chat_security_identity.test.ts (alg none, unknown kid, a
// wrong audience, a token expired beyond the clock tolerance, a forged
// signature on a good payload).
// ---------------------------------------------------------------------------

Deno.test("held: alg none, unknown kid, wrong audience, expired and re-signed tokens are 401", () =>
  withHarness({}, async (h) => {
    const m = await h.member();
    const claims = {
      sub: m.userId,
      aud: "authenticated",
      role: "authenticated",
      iss: h.auth.issuer,
      exp: inAnHour(),
    };
    const b64 = (v: unknown) =>
      btoa(JSON.stringify(v)).replace(/=+$/, "").replace(/\+/g, "-").replace(/\//g, "_");
    const hs = async (c: Record<string, unknown>, header: Record<string, unknown> = {}) =>
      await new SignJWT(c).setProtectedHeader({ alg: "HS256", typ: "JWT", ...header }).sign(
        new TextEncoder().encode(h.auth.jwtSecret),
      );
    const hmacSigned = async (header: unknown, payload: unknown) => {
      const input = `${b64(header)}.${b64(payload)}`;
      const key = await crypto.subtle.importKey(
        "raw",
        new TextEncoder().encode(h.auth.jwtSecret),
        { name: "HMAC", hash: "SHA-256" },
        false,
        ["sign"],
      );
      const mac = new Uint8Array(
        await crypto.subtle.sign("HMAC", key, new TextEncoder().encode(input)),
      );
      const sig64 = btoa(String.fromCharCode(...mac)).replace(/=+$/, "").replace(/\+/g, "-")
        .replace(/\//g, "_");
      return `${input}.${sig64}`;
    };
    // Control: a hand-signed token with the same helper is accepted.
    const control = await hmacSigned({ alg: "HS256", typ: "JWT" }, claims);
    const ok = await h.call({ message: "hi", org_id: m.orgId }, { token: control });
    assertEquals(await statusOf(ok), 200, "control token");
    const [head, , sig] = m.token.split(".");
    const tokens: Record<string, string> = {
      "alg none": `${b64({ alg: "none", typ: "JWT" })}.${b64(claims)}.`,
      "alg none, upper case": `${b64({ alg: "NONE" })}.${b64(claims)}.`,
      "ES256 header, payload swapped": `${head}.${
        b64({ ...claims, sub: crypto.randomUUID() })
      }.${sig}`,
      "wrong audience": await hs({ ...claims, aud: "anon" }),
      "expired a minute ago": await hs({ ...claims, exp: Math.floor(Date.now() / 1000) - 60 }),
      "crit header": await hmacSigned({ alg: "HS256", crit: ["x-evil"], "x-evil": true }, claims),
      "ES256 signed by a key the JWKS does not hold": await new SignJWT(claims)
        .setProtectedHeader({ alg: "ES256", kid: h.auth.jwks.keys[0]!.kid!, typ: "JWT" })
        .sign((await generateKeyPair("ES256")).privateKey),
      "ES256 with an unknown kid": await new SignJWT(claims)
        .setProtectedHeader({ alg: "ES256", kid: "../../etc/passwd", typ: "JWT" })
        .sign((await generateKeyPair("ES256")).privateKey),
      "two-part token": `${b64({ alg: "HS256" })}.${b64(claims)}`,
    };
    for (const [name, token] of Object.entries(tokens)) {
      const res = await h.call({ message: "hi", org_id: m.orgId }, { token });
      assertEquals(res.status, 401, name);
      await res.body?.cancel();
    }
    assertEquals(h.openai.requests.length, 1, "only the control token reached the model");
  }));
