/**
 * Model fallbacks end to end, on both session stores: a primary that fails,
 * then AI_AGENT_MODEL_FALLBACKS in order (one refusing connections, one
 * answering on its own stand-in). The answer and its usage row name the
 * model that answered, with its tokens; `metadata.model_attempts` lists every
 * attempt and bills only what may have run; a stream falls back only before
 * its first delta.
 */
import { assert, assertEquals, assertMatch } from "./assert.ts";
import { attemptsOf, brief, withFallbacks } from "../support/fallbacks.ts";
import { parseSse } from "../support/sse.ts";

for (const store of ["supabase", "redis"] as const) {
  Deno.test(`fallbacks (${store}): a JSON answer from the fallback, metered as its model`, () =>
    withFallbacks({ store }, async (h, backup) => {
      const m = await h.member();
      h.openai.script({ kind: "error", status: 500 });
      backup.script({ kind: "reply", text: "the backup answers" });
      const res = await h.call({ message: "how do I record a contribution?", org_id: m.orgId }, {
        token: m.token,
      });
      const body = await res.json();
      assertEquals(res.status, 200, JSON.stringify(body));
      assertEquals(body.message, "the backup answers");
      assertMatch(body.model, /^backup-model/);
      assertEquals(backup.requests.at(-1)!.authorization, "Bearer sk-backup");
      const [row] = await h.usageRows(body.request_id);
      assertEquals(row!.model, body.model);
      assertEquals(row!.success, true);
      // The 500 and the refused connection bill nothing: the tokens are the answer's alone.
      assertEquals(Number(row!.prompt_tokens), body.usage.prompt_tokens);
      assertEquals(Number(row!.completion_tokens), body.usage.completion_tokens);
      assertEquals(attemptsOf(row!).map(brief), [
        "primary-model failed:500 none",
        "refused-model failed:refused none",
        "backup-model answered reported",
      ]);
      // The history holds the fallback's answer: the next turn carries on.
      const next = await h.call({
        message: "and then?",
        org_id: m.orgId,
        session_id: body.session_id,
      }, { token: m.token });
      assertEquals(next.status, 200);
      assertEquals((await next.json()).model.startsWith("primary-model"), true);
      const sent = h.openai.requests.at(-1)!.body.messages.map((x) => x.content);
      assert(sent.includes("the backup answers"), "the fallback's reply is in the history");
    }));

  Deno.test(`fallbacks (${store}): a stream that fails before its first delta falls back`, () =>
    withFallbacks({ store }, async (h, backup) => {
      const m = await h.member();
      h.openai.script({ kind: "error", status: 429 });
      backup.script({ kind: "reply", text: "streamed by the backup" });
      const res = await h.call({ message: "hi", org_id: m.orgId, stream: true }, {
        token: m.token,
      });
      assertEquals(res.status, 200);
      const events = parseSse(await res.text());
      const text = events.filter((e) => e.event === "delta").map((e) => e.data.text).join("");
      assertEquals(text, "streamed by the backup");
      const done = events.at(-1)!;
      assertEquals(done.event, "done");
      assertMatch(done.data.model, /^backup-model/);
      const [row] = await h.usageRows(done.data.request_id);
      assertEquals(row!.model, done.data.model);
      assertEquals(Number(row!.total_tokens), done.data.usage.total_tokens);
      assertEquals(attemptsOf(row!).map(brief), [
        "primary-model failed:429 none",
        "refused-model failed:refused none",
        "backup-model answered reported",
      ]);
    }));

  Deno.test(`fallbacks (${store}): after the first delta a failure ends the stream, no fallback`, () =>
    withFallbacks({ store }, async (h, backup) => {
      const m = await h.member();
      h.openai.script({ kind: "cut", afterChunks: 1 });
      const res = await h.call({ message: "a long question", org_id: m.orgId, stream: true }, {
        token: m.token,
      });
      const events = parseSse(await res.text());
      assertEquals(events.filter((e) => e.event === "delta").length >= 1, true);
      assertEquals(events.at(-1)!.event, "error");
      assertEquals(events.at(-1)!.data.error.code, "openai_error");
      assertEquals(backup.requests.length, 0, "nothing goes to a fallback mid-stream");
      const [row] = await h.usageRows(events[0]!.data.request_id);
      assertEquals([row!.success, row!.error_code], [false, "openai_error"]);
      assertEquals(attemptsOf(row!).map(brief), ["primary-model failed:connection none"]);
    }));

  Deno.test(`fallbacks (${store}): every upstream failing is 502 openai_error, one row`, () =>
    withFallbacks({ store }, async (h, backup) => {
      const m = await h.member();
      h.openai.script({ kind: "error", status: 503 });
      backup.script({ kind: "error", status: 500 });
      const res = await h.call({ message: "hi", org_id: m.orgId }, { token: m.token });
      const body = await res.json();
      assertEquals([res.status, body.error.code], [502, "openai_error"]);
      const rows = await h.usageRows(body.error.request_id);
      assertEquals(rows.length, 1);
      assertEquals(rows[0]!.model, "primary-model");
      assertEquals(rows[0]!.total_tokens, null, "nothing ran: nothing billed");
      assertEquals(attemptsOf(rows[0]!).map(brief), [
        "primary-model failed:503 none",
        "refused-model failed:refused none",
        "backup-model failed:500 none",
      ]);
    }));
}

Deno.test("fallbacks: a timeout before the first byte falls back, the timed-out prompt estimated", () =>
  withFallbacks({ env: { AI_AGENT_OPENAI_TIMEOUT_MS: "1000" } }, async (h, backup) => {
    const m = await h.member();
    h.openai.script({ kind: "hang" });
    backup.script({ kind: "reply", text: "late but answered" });
    const res = await h.call({ message: "hi", org_id: m.orgId }, { token: m.token });
    const body = await res.json();
    assertEquals(res.status, 200, JSON.stringify(body));
    const [row] = await h.usageRows(body.request_id);
    assert(Number(row!.prompt_tokens) > body.usage.prompt_tokens, "the hung prompt is metered");
    assertEquals((row!.metadata as Record<string, unknown>).tokens_estimated, true);
    assertEquals(attemptsOf(row!).map(brief), [
      "primary-model failed:timeout estimated",
      "refused-model failed:refused none",
      "backup-model answered reported",
    ]);
  }));

Deno.test("fallbacks: a 400 from the primary is the request's fault, not a reason to fall back", () =>
  withFallbacks({}, async (h, backup) => {
    const m = await h.member();
    h.openai.script({ kind: "error", status: 400 });
    const res = await h.call({ message: "hi", org_id: m.orgId }, { token: m.token });
    assertEquals([res.status, (await res.json()).error.code], [502, "openai_error"]);
    assertEquals(backup.requests.length, 0);
  }));
