/**
 * agent-chat's security controls, attacked end to end: a signed-in caller's
 * refusals write bounded rows, charge the user: bucket, never name a foreign
 * org, and answer, charge and write the same in both session stores.
 *
 * Waits are bounded polls on an observable (a row, a log line, a recorded
 * upstream request), never a bare sleep that a slow machine could lose.
 */
import { assert, assertEquals } from "./assert.ts";
import { type Harness, type Member } from "../support/function-harness.ts";
import { expectError, statusOf, withDb, withHarness } from "../support/test-helpers.ts";
import { bucket, type Meta, rowsOfUser, type Store, STORES, testIp } from "../support/attack.ts";

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

  Deno.test(`authenticated refusals (${store}): forbidden charges the user: bucket, 429 past the user limit`, () =>
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

  Deno.test(`authenticated refusals (${store}): session_not_found charges the user: bucket, 429 past the user limit`, () =>
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

  Deno.test(`authenticated refusals (${store}): opt_out charges the user: bucket, 429 past the user limit`, () =>
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

  Deno.test(`authenticated refusals (${store}): a non-member naming an opted-out org is forbidden, and the row names no org`, () =>
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

Deno.test("authenticated refusals: the aggregated row carries event_count", () =>
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
