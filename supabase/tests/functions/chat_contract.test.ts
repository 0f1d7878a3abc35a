/**
 * More of agent-chat's contract end to end: exact admission over HTTP,
 * spoofed forwarding headers, alg:none, the history cap, and a call through
 * supabase-js `functions.invoke` as the mobile apps make it.
 */
import { createClient, FunctionsHttpError } from "@supabase/supabase-js";
import { assert, assertEquals } from "./assert.ts";
import { withHarness } from "../support/test-helpers.ts";

Deno.test("rate limit over HTTP: 200 concurrent requests against a user limit of 50 admit exactly 50", () =>
  withHarness({ env: { AI_AGENT_RATE_LIMIT_USER_MAX_REQUESTS: "50" } }, async (h) => {
    const m = await h.member();
    const statuses = await Promise.all(
      Array.from(
        { length: 200 },
        (_, i) =>
          h.call({ message: `burst ${i}`, org_id: m.orgId }, { token: m.token }).then(async (r) => {
            await r.body?.cancel();
            return r.status;
          }),
      ),
    );
    assertEquals(statuses.filter((s) => s === 200).length, 50);
    assertEquals(statuses.filter((s) => s === 429).length, 150);
    const [bucket] = await h.sql`select slot_total from ops.rate_limits where bucket_key = ${
      "user:" + m.userId
    }`;
    assertEquals(bucket!.slot_total, 50);
  }));

Deno.test("client IP: a spoofed X-Forwarded-For prefix is ignored; the trusted hop decides", () =>
  withHarness({}, async (h) => {
    const m = await h.member();
    // The harness puts a CDN in front of the gateway (2 trusted hops): the
    // client wrote "6.6.6.6", the CDN appended the real address 10.77.0.5,
    // the gateway appends its peer.
    const res = await h.call({ message: "hi", org_id: m.orgId }, {
      token: m.token,
      ip: "6.6.6.6, 10.77.0.5",
    });
    const body = await res.json();
    assertEquals(res.status, 200);
    const [row] = await h.usageRows(body.request_id);
    assertEquals((row!.metadata as { client_ip: string }).client_ip, "10.77.0.5");
    const spoofed = await h.sql`select 1 from ops.rate_limits where bucket_key = 'ip:6.6.6.6'`;
    assertEquals(spoofed.length, 0);
  }));

Deno.test("tokens: alg none, and a valid token signed for another audience, are 401", () =>
  withHarness({}, async (h) => {
    const m = await h.member();
    const [, payload] = m.token.split(".");
    const none = `${btoa('{"alg":"none","typ":"JWT"}').replace(/=+$/, "")}.${payload}.`;
    for (const token of [none, await h.auth.userToken(m.userId, { audience: "anon" })]) {
      const res = await h.call({ message: "hi", org_id: m.orgId }, { token });
      assertEquals(res.status, 401);
      assertEquals((await res.json()).error.code, "unauthorized");
    }
  }));

for (const store of ["supabase", "redis"] as const) {
  Deno.test(`history cap (${store}): the model sees at most AI_AGENT_SESSION_MAX_MESSAGES earlier messages`, () =>
    withHarness({ store, env: { AI_AGENT_SESSION_MAX_MESSAGES: "4" } }, async (h) => {
      const m = await h.member();
      const session = crypto.randomUUID();
      for (let i = 1; i <= 4; i++) {
        const res = await h.call({ message: `turn ${i}`, org_id: m.orgId, session_id: session }, {
          token: m.token,
        });
        assertEquals(res.status, 200);
        await res.body?.cancel();
      }
      const seen = h.openai.requests.at(-1)!.body.messages.map((x) => x.content);
      // system prompt, the newest 4 stored messages (turns 2 and 3 with replies), then turn 4.
      assertEquals(seen.slice(1), [
        "turn 2",
        "You said: turn 2",
        "turn 3",
        "You said: turn 3",
        "turn 4",
      ]);
    }));
}

Deno.test("supabase-js functions.invoke: answers, and errors come back as FunctionsHttpError with our body", () =>
  withHarness({}, async (h) => {
    const m = await h.member();
    const client = createClient(h.gateway.url, "sb_publishable_local", {
      auth: { persistSession: false, autoRefreshToken: false },
      global: { headers: { authorization: `Bearer ${m.token}`, "x-forwarded-for": "10.1.1.1" } },
    });
    const { data, error } = await client.functions.invoke("agent-chat", {
      body: { message: "from the app", org_id: m.orgId, channel: "app" },
    });
    assertEquals(error, null);
    assertEquals(data.message, "You said: from the app");
    const refused = await client.functions.invoke("agent-chat", {
      body: { message: "", org_id: m.orgId },
    });
    assert(refused.error instanceof FunctionsHttpError);
    const body = await refused.error.context.json();
    assertEquals(body.error.code, "invalid_request");
  }));
