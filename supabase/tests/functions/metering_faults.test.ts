/**
 * Findings "a save that times out breaks idempotency" and "an outage loses
 * usage", with the faults made real: a session row lock held past the
 * database timeout, Redis frozen (SIGSTOP) mid-save, Postgres connections
 * swallowed mid-turn (a TCP proxy that stops answering). Whatever fails
 * after the model answered: the client gets the answer (the same on both
 * stores), the Idempotency-Key stays held while the save's outcome is
 * unknown (409), then replays; one model call, one usage row, one stored
 * turn; the reservation is released once the row lands.
 */
import { assert, assertEquals } from "./assert.ts";
import type { Harness, Member } from "../support/function-harness.ts";
import { testUrls } from "../support/function-harness.ts";
import { startRedis } from "../support/redis.ts";
import { startTcpProxy } from "../support/tcp-proxy.ts";
import { withHarness } from "../support/test-helpers.ts";

async function waitFor<T>(probe: () => Promise<T> | T, done: (v: T) => boolean, ms = 8000) {
  const until = performance.now() + ms;
  let value = await probe();
  while (!done(value) && performance.now() < until) {
    await new Promise((r) => setTimeout(r, 25));
    value = await probe();
  }
  return value;
}

function keyed(h: Harness, m: Member, body: Record<string, unknown>, key: string) {
  return h.call(body, { token: m.token, ip: m.ip, headers: { "idempotency-key": key } });
}

const recovered = (h: Harness, requestId: string) => () =>
  h.logs.some((l) => l.event === "write_recovered" && l.fields.request_id === requestId);

async function keyState(h: Harness, m: Member, key: string) {
  const [row] = await h.sql`select state from ops.idempotency_keys
    where user_id = ${m.userId} and idempotency_key = ${key}`;
  return row?.state as string | undefined;
}

Deno.test("a save that times out breaks idempotency (supabase): a session row lock held past the database timeout is 200, the keyed retry 409 until the save lands, then a replay; one model call, one row, one stored turn", () =>
  withHarness({ env: { AI_AGENT_DB_TIMEOUT_MS: "400" } }, async (h) => {
    const m = await h.member();
    const first = await h.call({ message: "one", org_id: m.orgId }, { token: m.token, ip: m.ip });
    const { session_id } = await first.json();
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
    const body = { message: "two", org_id: m.orgId, session_id };
    let answer: Record<string, unknown>;
    let requestId: string;
    try {
      const res = await keyed(h, m, body, "lock-1");
      answer = await res.json();
      assertEquals(res.status, 200, JSON.stringify(answer));
      requestId = res.headers.get("x-request-id")!;
      const retry = await keyed(h, m, body, "lock-1");
      assertEquals(retry.status, 409, "held while the save's outcome is unknown");
      await retry.body?.cancel();
      assertEquals(await keyState(h, m, "lock-1"), "running");
    } finally {
      release();
      await holder;
    }
    assert(await waitFor(recovered(h, requestId), (v) => v), "the retried save ended");
    const replay = await keyed(h, m, body, "lock-1");
    assertEquals(replay.headers.get("idempotent-replayed"), "true");
    assertEquals((await replay.json()).message, answer.message);
    assertEquals(h.openai.requests.length, 2, "one model call per turn");
    const rows = await h.usageRows(requestId);
    assertEquals(rows.map((r) => r.success), [true], "one row, the turn saved");
    const [stored] = await h.sql`select count(*)::int as n from public.agent_session_messages
      where session_id = ${session_id}`;
    assertEquals(stored!.n, 4, "the turn is stored once");
  }));

Deno.test("a save that times out breaks idempotency (redis): Redis frozen mid-save is 200, the keyed retry 409 until the save lands, then a replay; one append, one row", async () => {
  const redis = await startRedis();
  try {
    await withHarness({ store: "redis", env: { AI_AGENT_REDIS_URL: redis.url } }, async (h) => {
      const m = await h.member();
      h.openai.script({ kind: "reply", text: "the answer", latencyMs: 400 });
      const body = { message: "hi", org_id: m.orgId };
      const pending = keyed(h, m, body, "freeze-1");
      await waitFor(() => h.openai.requests.length, (n) => n >= 1);
      redis.freeze();
      let requestId: string;
      let sessionId: string;
      try {
        const res = await pending;
        const answer = await res.json();
        assertEquals(res.status, 200, JSON.stringify(answer));
        requestId = res.headers.get("x-request-id")!;
        sessionId = answer.session_id;
        const retry = await keyed(h, m, body, "freeze-1");
        assertEquals(retry.status, 409, "held while the save's outcome is unknown");
        await retry.body?.cancel();
      } finally {
        redis.thaw();
      }
      assert(await waitFor(recovered(h, requestId), (v) => v), "the retried save ended");
      const replay = await keyed(h, m, body, "freeze-1");
      assertEquals(replay.headers.get("idempotent-replayed"), "true");
      assertEquals((await replay.json()).message, "the answer");
      assertEquals(h.openai.requests.length, 1, "one model call");
      assertEquals((await h.usageRows(requestId)).map((r) => r.success), [true]);
      const next = await h.call({ message: "again", org_id: m.orgId, session_id: sessionId }, {
        token: m.token,
        ip: m.ip,
      });
      assertEquals(next.status, 200);
      await next.body?.cancel();
      const sent = h.openai.requests.at(-1)!.body.messages.filter((x) => x.role !== "system");
      assertEquals(sent.length, 3, "the frozen turn was appended once");
    });
  } finally {
    await redis.stop();
  }
});

for (const store of ["supabase", "redis"] as const) {
  Deno.test(`an outage loses usage (${store}): Postgres connections swallowed mid-turn, the client gets 200, the row and the settlement land when it is back`, async () => {
    const { databaseUrl } = testUrls();
    const target = new URL(databaseUrl);
    const proxy = startTcpProxy({ hostname: target.hostname, port: Number(target.port) });
    const viaProxy = new URL(databaseUrl);
    viaProxy.port = String(proxy.port);
    try {
      await withHarness({
        store,
        transport: "postgres",
        env: { AI_AGENT_DATABASE_URL: viaProxy.href, AI_AGENT_DB_TIMEOUT_MS: "500" },
      }, async (h) => {
        const m = await h.member();
        // A quota, so the turn holds a reservation until its row settles it.
        await h.sql`select ops.policy_set(${m.orgId}::uuid, null,
          '{"user_tokens_per_day": 1000000}', 'test')`;
        h.openai.script({ kind: "reply", text: "the answer", latencyMs: 300 });
        const pending = keyed(h, m, { message: "hi", org_id: m.orgId }, "outage-1");
        await waitFor(() => h.openai.requests.length, (n) => n >= 1);
        proxy.blackhole();
        const res = await pending;
        const answer = await res.json();
        assertEquals(res.status, 200, JSON.stringify(answer));
        const requestId = res.headers.get("x-request-id")!;
        assertEquals((await h.usageRows(requestId)).length, 0, "not written while it is down");
        const [held] = await h.sql`select count(*)::int as n from ops.token_reservations
          where request_id = ${requestId}`;
        assertEquals(held!.n, 1, "the reservation is held meanwhile");
        proxy.restore();
        const rows = await waitFor(() => h.usageRows(requestId), (r) => r.length > 0);
        assertEquals(rows.map((r) => r.success), [true], "one row once it is back");
        assert(Number(rows[0]!.total_tokens) > 0);
        const [open] = await h.sql`select count(*)::int as n from ops.token_reservations
          where request_id = ${requestId}`;
        assertEquals(open!.n, 0, "the reservation is settled");
        assertEquals(await keyState(h, m, "outage-1"), "completed");
        const replay = await keyed(h, m, { message: "hi", org_id: m.orgId }, "outage-1");
        assertEquals(replay.headers.get("idempotent-replayed"), "true");
        assertEquals((await replay.json()).message, "the answer");
        assertEquals(h.openai.requests.length, 1, "one model call");
      });
    } finally {
      await proxy.stop();
    }
  });
}

for (const stream of [false, true]) {
  Deno.test(`a stream has no deadline (${stream ? "SSE" : "JSON"}): a model call past AI_AGENT_TURN_DEADLINE_SECONDS ends by it, metered with its estimate, the reservation and the key released`, () =>
    withHarness({
      env: { AI_AGENT_TURN_DEADLINE_SECONDS: "2", AI_AGENT_OPENAI_TIMEOUT_MS: "30000" },
    }, async (h) => {
      const m = await h.member();
      // Warm: the first request of an isolate loads what it needs (JWKS, modules), and the
      // first estimate the tokenizer (once per isolate, blocking it for about a second).
      h.openai.script({ kind: "cut", afterChunks: 1 });
      const warm = await h.call({ message: "warm", org_id: m.orgId, stream: true }, {
        token: m.token,
        ip: m.ip,
      });
      assertEquals(warm.status, 200);
      await warm.text();
      await h.sql`select ops.policy_set(${m.orgId}::uuid, null,
        '{"user_tokens_per_day": 1000000}', 'test')`;
      h.openai.script(
        stream
          ? { kind: "reply", text: "x".repeat(240), chunkDelayMs: 400 } // 20 chunks: 8 s
          : { kind: "reply", text: "late", latencyMs: 8000 },
      );
      const started = performance.now();
      const res = await keyed(h, m, { message: "hi", org_id: m.orgId, stream }, "late-1");
      const text = await res.text();
      const elapsed = performance.now() - started;
      assert(elapsed >= 2000 && elapsed < 3000, `ended after ${Math.round(elapsed)} ms`);
      const requestId = res.headers.get("x-request-id")!;
      if (stream) {
        assertEquals(res.status, 200);
        assert(/event: error\n.*took too long/.test(text), text);
      } else {
        assertEquals([res.status, JSON.parse(text).error.code], [502, "openai_error"]);
      }
      const [row] = await waitFor(() => h.usageRows(requestId), (r) => r.length > 0);
      assertEquals(row?.error_code, "openai_error");
      assertEquals(row?.error_message, "turn deadline of 2 s passed");
      assert(Number(row?.prompt_tokens) > 0, "the prompt that was sent is metered");
      assertEquals((row?.metadata as Record<string, unknown>).tokens_estimated, true);
      const [open] = await h.sql`select count(*)::int as n from ops.token_reservations
        where request_id = ${requestId}`;
      assertEquals(open!.n, 0, "the reservation is released");
      assertEquals(await keyState(h, m, "late-1"), undefined, "the key is released");
    }));
}
