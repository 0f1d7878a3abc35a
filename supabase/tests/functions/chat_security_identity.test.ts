/**
 * agent-chat's security controls, attacked end to end: channels a token may
 * name, tokens the function refuses, and request ids (the server's own).
 *
 * Waits are bounded polls on an observable (a row, a log line, a recorded
 * upstream request), never a bare sleep that a slow machine could lose.
 */
import { assert, assertEquals, assertMatch } from "./assert.ts";
import { expectError, statusOf, withDb, withHarness } from "../support/test-helpers.ts";
import { hs256, inAnHour, type Meta } from "../support/attack.ts";

// ---------------------------------------------------------------------------
// 6. Channels
// ---------------------------------------------------------------------------

Deno.test("channels: an opt-out row with channel 'SMS' (or any non-channel) is impossible", () =>
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
