/**
 * Members' data end to end, on both session stores (Redis over TCP and over
 * the Upstash REST stand-in): `ops export` holds the conversation, usage rows
 * and opt-outs; `ops forget` erases the member in Postgres and Redis, keeps
 * the org's token totals, and a follow-up with the old session id (and a
 * replayed Idempotency-Key) reaches the model with no history; deleting the
 * auth user erases the same, Redis through `ops forget --pending`, and a new
 * account with the same id starts from nothing. The CLI runs as operators
 * run it, as its own process.
 */
import { Redis } from "ioredis";
import { assert, assertEquals } from "./assert.ts";
import { type Harness, type Member, testUrls } from "../support/function-harness.ts";
import { withDb, withHarness } from "../support/test-helpers.ts";
import { runOps } from "../../../scripts/ops.ts";

const root = new URL("../../../", import.meta.url).pathname;

const variants = [
  { name: "supabase store", store: "supabase" },
  { name: "redis store (tcp)", store: "redis", redisVia: "tcp" },
  { name: "redis store (upstash rest)", store: "redis", redisVia: "upstash" },
] as const;
type Variant = typeof variants[number];

/** `npm run ops -- <args>` as its own process, pointed at the harness's stores. */
async function ops(h: Harness, v: Variant, ...args: string[]) {
  const redis: { flags: string[]; env: Record<string, string> } = v.store === "supabase"
    ? { flags: ["--no-redis"], env: {} }
    : v.redisVia === "upstash"
    ? {
      flags: [],
      env: { AI_AGENT_REDIS_URL: h.upstash!.url, AI_AGENT_REDIS_TOKEN: h.upstash!.token },
    }
    : { flags: ["--redis", h.redisUrl], env: {} };
  const r = await new Deno.Command(Deno.execPath(), {
    args: ["run", "--allow-all", "--no-check", "scripts/ops.ts", ...args, ...redis.flags],
    cwd: root,
    env: { NO_COLOR: "1", DATABASE_URL: testUrls().databaseUrl, ...redis.env },
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).output();
  const text = (b: Uint8Array) => new TextDecoder().decode(b);
  return { code: r.code, out: text(r.stdout), err: text(r.stderr) };
}

async function chat(
  h: Harness,
  m: Member,
  message: string,
  extra: Record<string, unknown> = {},
  headers = {},
) {
  const r = await h.call({ message, org_id: m.orgId, ...extra }, {
    token: m.token,
    ip: m.ip,
    headers,
  });
  const body = await r.json();
  assertEquals(r.status, 200, JSON.stringify(body));
  return { body, replayed: r.headers.get("idempotent-replayed") === "true" };
}

async function redisKeys(h: Harness, pattern: string): Promise<string[]> {
  const redis = new Redis(h.redisUrl);
  try {
    return await redis.keys(pattern);
  } finally {
    redis.disconnect();
  }
}

async function orgTokens(h: Harness, orgId: string, requestIds: string[]): Promise<number> {
  const [row] = await h
    .sql`select coalesce(sum(total_tokens), 0)::int as n from public.agent_usage_events
    where org_id = ${orgId} and request_id = any(${requestIds})`;
  return row!.n;
}

for (const v of variants) {
  Deno.test(`members (${v.name}): export, forget, then the old session and key hold nothing`, () =>
    withHarness(
      { store: v.store, ...("redisVia" in v ? { redisVia: v.redisVia } : {}) },
      async (h) => {
        const m = await h.member();
        const first = await chat(h, m, "My phone is +250788123456");
        const session = first.body.session_id as string;
        const key = { "idempotency-key": crypto.randomUUID() };
        const second = await chat(h, m, "I live at KG 11 Ave", { session_id: session }, key);
        await h
          .sql`select ops.add_opt_out(${m.orgId}::uuid, ${m.userId}::uuid, 'sms', 'asked', 'test')`;
        const requestIds = [first.body.request_id, second.body.request_id];
        const tokensBefore = await orgTokens(h, m.orgId, requestIds);
        assert(tokensBefore > 0);

        // An id typed in capitals names the same member in both stores.
        const exported = await ops(h, v, "export", "--user", m.userId.toUpperCase());
        assertEquals(exported.code, 0, exported.err);
        const doc = JSON.parse(exported.out);
        assertEquals(doc.sessions.length, 1, "one session, from the store in use");
        assertEquals(doc.sessions[0].id, session);
        assertEquals(doc.sessions[0].messages.map((x: { content: string }) => x.content), [
          "My phone is +250788123456",
          "You said: My phone is +250788123456",
          "I live at KG 11 Ave",
          "You said: I live at KG 11 Ave",
        ]);
        assertEquals(doc.usage_events.length, 2);
        assertEquals(doc.opt_outs.map((o: { channel: string }) => o.channel), ["sms"]);
        assertEquals(doc.opt_out_history.map((a: { action: string }) => a.action), ["insert"]);

        const forgot = await ops(h, v, "forget", "--user", m.userId, "--by", "ticket 7", "--json");
        assertEquals(forgot.code, 0, forgot.err);
        const result = JSON.parse(forgot.out)[0];
        assertEquals(result.redis, v.store === "redis" ? "done" : "no_redis");
        assertEquals(result.usage_rows_pseudonymised, 2);
        assertEquals(
          await redisKeys(h, `agent-chat:*${session}*`),
          [],
          "no Redis key of the session",
        );
        assertEquals(
          await redisKeys(h, `agent-chat:member:{${m.userId}}*`),
          [],
          "nor the member's index",
        );
        assertEquals(
          await orgTokens(h, m.orgId, requestIds),
          tokensBefore,
          "the org's tokens are unchanged",
        );
        const [named] = await h
          .sql`select count(*)::int as n from public.agent_usage_events where user_id = ${m.userId}`;
        assertEquals(named!.n, 0, "no usage row names the member");
        const [opt] = await h
          .sql`select count(*)::int as n from public.agent_opt_outs where user_id = ${m.userId}`;
        assertEquals(opt!.n, 1, "the opt-out stays");

        // The same key and body again: not the erased answer, a new turn without history.
        const replay = await chat(h, m, "I live at KG 11 Ave", { session_id: session }, key);
        assertEquals(replay.replayed, false, "the erased answer is not replayed");
        assert(replay.body.request_id !== second.body.request_id);
        const sent = h.openai.requests.at(-1)!.body.messages;
        assertEquals(sent.map((x) => x.role), ["system", "user"], "the model gets no history");
        const after = JSON.parse((await ops(h, v, "export", "--user", m.userId)).out);
        assertEquals(after.sessions[0].messages.length, 2, "only the new turn");
        assertEquals(after.erasures.length, 1);
      },
    ));
}

for (const v of [variants[0], variants[1]]) {
  Deno.test(`members (${v.name}): deleting the auth user erases; a new account with that id starts empty`, () =>
    withHarness(
      { store: v.store, ...("redisVia" in v ? { redisVia: v.redisVia } : {}) },
      async (h) => {
        const m = await h.member();
        const first = await chat(h, m, "My savings are 12,000");
        const session = first.body.session_id as string;
        await h.sql`delete from auth.users where id = ${m.userId}`;
        const [erasure] = await h
          .sql`select source, redis_state from ops.member_erasures where user_id = ${m.userId}`;
        assertEquals(erasure, { source: "auth_delete", redis_state: "pending" });
        const [rows] = await h
          .sql`select count(*)::int as n from public.agent_sessions where user_id = ${m.userId}`;
        assertEquals(rows!.n, 0, "the Postgres part ran in the delete");

        const pending = await ops(h, v, "forget", "--pending", "--by", "nightly", "--json");
        assertEquals(pending.code, 0, pending.err);
        const mine = JSON.parse(pending.out).find((r: { user_id: string }) =>
          r.user_id === m.userId
        );
        assertEquals(mine.redis_sessions_deleted, v.store === "redis" ? 1 : null);
        assertEquals(await redisKeys(h, `agent-chat:*${session}*`), []);

        await h.sql`insert into auth.users (id) values (${m.userId})`;
        await h
          .sql`insert into public.org_memberships (org_id, user_id) values (${m.orgId}, ${m.userId})`;
        await chat(h, m, "Hello again", { session_id: session });
        const sent = h.openai.requests.at(-1)!.body.messages;
        assertEquals(sent.map((x) => x.role), ["system", "user"], "the new account has no history");
      },
    ));
}

Deno.test("members: forget, export and retention refuse bad arguments with exit 2, one line", async () => {
  const user = crypto.randomUUID();
  for (
    const argv of [
      ["forget", "--user", user, "--no-redis"],
      ["forget", "--user", "not-a-uuid", "--by", "x", "--no-redis"],
      ["forget", "--by", "x", "--no-redis"],
      ["export", "--no-redis"],
      ["retention", "set", "keep_forever=1"],
      ["retention", "set", "usage_row_months=many"],
    ]
  ) {
    let err = "";
    const code = await runOps(
      [...argv, "--db", testUrls().databaseUrl],
      () => {},
      (s) => (err += s),
    );
    assertEquals(code, 2, `${argv.join(" ")}: ${err}`);
    assertEquals(err.trim().split("\n").length, 1, err);
    assert(!/unknown option/.test(err), `${argv.join(" ")}: refused for its own reason: ${err}`);
  }
  const [row] = await withDb((sql) =>
    sql`select count(*)::int as n from ops.member_erasures where user_id = ${user}`
  );
  assertEquals(row!.n, 0, "a refused forget erased nothing");
});

Deno.test("members: Redis down during forget: Postgres is erased, the Redis part stays queued with the error", async () => {
  const user = crypto.randomUUID();
  let err = "";
  const code = await runOps(
    [
      "forget",
      "--user",
      user,
      "--by",
      "ticket 9",
      "--redis",
      "redis://127.0.0.1:1",
      "--db",
      testUrls().databaseUrl,
    ],
    () => {},
    (s) => (err += s),
  );
  assertEquals(code, 1, err);
  assert(err.includes("forget --pending"), err);
  const [queued] = await withDb((sql) =>
    sql`select e.redis_state, q.attempts, q.last_error is not null as has_error
        from ops.member_erasures e join ops.redis_erasure_queue q on q.erasure_id = e.id
        where e.user_id = ${user}`
  );
  assertEquals(queued, { redis_state: "pending", attempts: 1, has_error: true });
});

Deno.test("members: a member cannot erase or export another member through the Data API", () =>
  withHarness({}, async (h) => {
    const victim = await h.member();
    const attacker = await h.member(victim.orgId);
    await chat(h, victim, "My phone is +250788123456");
    for (
      const [fn, args] of [
        ["forget_user", { p_user_id: victim.userId, p_by: "attacker" }],
        ["export_user", { p_user_id: victim.userId }],
        ["redis_erasure_done", { p_erasure_id: 1, p_sessions_deleted: 0 }],
      ] as const
    ) {
      for (const profile of [{}, { "content-profile": "ops" }] as Array<Record<string, string>>) {
        const r = await fetch(`${h.gateway.url}/rest/v1/rpc/${fn}`, {
          method: "POST",
          headers: {
            apikey: attacker.token,
            authorization: `Bearer ${attacker.token}`,
            "content-type": "application/json",
            ...profile,
          },
          body: JSON.stringify(args),
        });
        const body = await r.text();
        assert(r.status >= 400 && r.status < 500, `${fn}: ${r.status} ${body}`);
        assert(!body.includes("+250788123456"), `${fn} leaked the victim's text`);
      }
    }
    const [left] = await h
      .sql`select count(*)::int as n from public.agent_sessions where user_id = ${victim.userId}`;
    assertEquals(left!.n, 1, "the victim's conversation is intact");
  }));
