/**
 * agent-chat end to end, over both database transports and both session
 * stores: gateway → function → real Postgres / Redis → OpenAI stand-in.
 */
import { assert, assertEquals, assertMatch } from "./assert.ts";
import { startHarness } from "../support/function-harness.ts";
import { parseSse } from "../support/sse.ts";

const variants = [
  { name: "rpc + supabase store", transport: "rpc", store: "supabase" },
  { name: "postgres + supabase store", transport: "postgres", store: "supabase" },
  { name: "rpc + redis (tcp)", transport: "rpc", store: "redis", redisVia: "tcp" },
  {
    name: "postgres + redis (upstash rest)",
    transport: "postgres",
    store: "redis",
    redisVia: "upstash",
  },
] as const;

for (const v of variants) {
  Deno.test(`end to end (${v.name}): a conversation keeps its history and logs usage`, async () => {
    const h = await startHarness({
      transport: v.transport,
      store: v.store,
      redisVia: "redisVia" in v ? v.redisVia : undefined,
    });
    try {
      const m = await h.member();
      const first = await h.call({ message: "  Hello there  ", org_id: m.orgId }, {
        token: m.token,
      });
      assertEquals(first.status, 200);
      const a = await first.json();
      assertMatch(a.session_id, /^[0-9a-f-]{36}$/);
      assertEquals(a.message, "You said: Hello there");
      assert(a.usage.total_tokens > 0);
      assertEquals(a.usage.total_tokens, a.usage.prompt_tokens + a.usage.completion_tokens);
      assertEquals(first.headers.get("x-request-id"), a.request_id);
      assertEquals(first.headers.get("ratelimit-limit"), "1000");
      assertEquals(first.headers.get("ratelimit-remaining"), "999");

      const second = await h.call({
        message: "And again",
        org_id: m.orgId,
        session_id: a.session_id,
      }, {
        token: m.token,
      });
      assertEquals(second.status, 200);
      const b = await second.json();
      assertEquals(b.session_id, a.session_id);
      // The model saw the system prompt, the first turn and the new message.
      const sent = h.openai.requests.at(-1)!.body.messages;
      assertEquals(sent.map((x) => x.role), ["system", "user", "assistant", "user"]);
      assertEquals(sent[1]!.content, "Hello there");
      assertEquals(sent[2]!.content, "You said: Hello there");
      assertEquals(sent[3]!.content, "And again");

      const rows = await h.usageRows(b.request_id);
      assertEquals(rows.length, 1);
      assertEquals(rows[0]!.success, true);
      assertEquals(rows[0]!.org_id, m.orgId);
      assertEquals(rows[0]!.user_id, m.userId);
      assertEquals(rows[0]!.session_id, a.session_id);
      assertEquals(rows[0]!.total_tokens, b.usage.total_tokens);
      assertEquals((rows[0]!.metadata as Record<string, unknown>).store, v.store);
    } finally {
      await h.stop();
    }
  });

  Deno.test(`end to end (${v.name}): another user's session id is not found, and nothing is written to it`, async () => {
    const h = await startHarness({
      transport: v.transport,
      store: v.store,
      redisVia: "redisVia" in v ? v.redisVia : undefined,
    });
    try {
      const owner = await h.member();
      const stranger = await h.member(owner.orgId);
      const a =
        await (await h.call({ message: "mine", org_id: owner.orgId }, { token: owner.token }))
          .json();
      const res = await h.call({
        message: "let me in",
        org_id: owner.orgId,
        session_id: a.session_id,
      }, {
        token: stranger.token,
      });
      assertEquals(res.status, 404);
      const body = await res.json();
      assertEquals(body.error.code, "session_not_found");
      assert(!JSON.stringify(body).includes(owner.userId));
      // The owner's history is untouched.
      const again = await h.call({
        message: "still mine?",
        org_id: owner.orgId,
        session_id: a.session_id,
      }, {
        token: owner.token,
      });
      assertEquals(again.status, 200);
      const sent = h.openai.requests.at(-1)!.body.messages.map((x) => x.content);
      assertEquals(sent.slice(1), ["mine", "You said: mine", "still mine?"]);
    } finally {
      await h.stop();
    }
  });

  Deno.test(`end to end (${v.name}): streaming sends deltas, then usage and the session id; the turn is saved`, async () => {
    const h = await startHarness({
      transport: v.transport,
      store: v.store,
      redisVia: "redisVia" in v ? v.redisVia : undefined,
    });
    try {
      const m = await h.member();
      h.openai.script({ kind: "reply", text: "A streamed answer that spans several chunks." });
      const res = await h.call({ message: "stream please", org_id: m.orgId, stream: true }, {
        token: m.token,
      });
      assertEquals(res.status, 200);
      assertMatch(res.headers.get("content-type") ?? "", /^text\/event-stream/);
      const events = parseSse(await res.text());
      const deltas = events.filter((e) => e.event === "delta").map((e) => e.data.text).join("");
      assertEquals(deltas, "A streamed answer that spans several chunks.");
      const done = events.at(-1)!;
      assertEquals(done.event, "done");
      assert(done.data.usage.total_tokens > 0);
      assert(h.openai.requests.at(-1)!.body.stream_options?.include_usage === true);
      const next = await h.call({
        message: "follow-up",
        org_id: m.orgId,
        session_id: done.data.session_id,
      }, {
        token: m.token,
      });
      assertEquals(next.status, 200);
      const sent = h.openai.requests.at(-1)!.body.messages.map((x) => x.content);
      assertEquals(sent.slice(1), [
        "stream please",
        "A streamed answer that spans several chunks.",
        "follow-up",
      ]);
      const rows = await h.usageRows(done.data.request_id);
      assertEquals(rows.length, 1);
      assertEquals(rows[0]!.total_tokens, done.data.usage.total_tokens);
    } finally {
      await h.stop();
    }
  });
}
