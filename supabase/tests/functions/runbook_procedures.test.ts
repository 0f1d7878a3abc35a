/**
 * The runbook's procedures (docs/operations.md blocks marked
 * `<!-- procedure: … -->`) run as written, with the example ids replaced by
 * a test tenant's, and each one's effect is checked through the function:
 * a cleared bucket admits the next request, an expired opt-out lets the
 * member through, a raised tenant limit admits more, a channel throttle
 * refuses and its lifting admits, the kill switch answers 503 with its
 * message, a raised budget admits again.
 */
import { assert, assertEquals } from "./assert.ts";
import { type Harness, type Member, testUrls } from "../support/function-harness.ts";
import { runOps } from "../../../scripts/ops.ts";
import { withHarness } from "../support/test-helpers.ts";

const doc = await Deno.readTextFile(new URL("../../../docs/operations.md", import.meta.url));
const procedures = new Map(
  [...doc.matchAll(/<!-- procedure: ([\w-]+) -->\s*```(sh|sql)\n([\s\S]*?)```/g)]
    .map((m) => [m[1]!, { kind: m[2]!, text: m[3]! }]),
);

const EXAMPLE_ORG = "00000000-0000-4000-8000-0000000000a1";
const EXAMPLE_USER = "00000000-0000-4000-8000-0000000000b1";

/** Shell words of one command line: spaces split, double or single quotes group. */
function words(line: string): string[] {
  return [...line.matchAll(/"([^"]*)"|'([^']*)'|(\S+)/g)].map((m) => m[1] ?? m[2] ?? m[3]!);
}

/** Runs a procedure as written, for `who` instead of the example tenant and member. */
async function run(h: Harness, name: string, who: Member): Promise<string> {
  const procedure = procedures.get(name);
  assert(procedure, `docs/operations.md has the procedure ${name}`);
  const text = procedure.text.replaceAll(EXAMPLE_ORG, who.orgId).replaceAll(
    EXAMPLE_USER,
    who.userId,
  );
  if (procedure.kind === "sql") {
    await h.sql.unsafe(text);
    return "";
  }
  let output = "";
  for (const line of text.split("\n").filter((l) => l.trim() && !l.startsWith("#"))) {
    const prefix = "npm run ops -- ";
    assert(line.startsWith(prefix), `a runbook command is an ops command: ${line}`);
    let errors = "";
    const code = await runOps(
      [...words(line.slice(prefix.length)), "--db", testUrls().databaseUrl],
      (s) => (output += s + "\n"),
      (s) => (errors += s),
    );
    assertEquals(code, 0, `${line}\n${errors}`);
  }
  return output;
}

async function statusOf(res: Response): Promise<string> {
  const text = await res.text();
  return res.status === 200 ? "200" : `${res.status} ${JSON.parse(text).error.code}`;
}

const ask = (h: Harness, m: Member, extra: Record<string, unknown> = {}) =>
  h.call({ message: "hi", org_id: m.orgId, ...extra }, { token: m.token, ip: m.ip });

Deno.test("runbook: every procedure the tests run is in docs/operations.md", () => {
  for (
    const name of [
      "clear-bucket",
      "expire-opt-out",
      "tenant-rollout",
      "channel-throttle",
      "channel-throttle-lift",
      "kill-switch-off",
      "kill-switch-on",
      "budget-raise",
    ]
  ) assert(procedures.has(name), `procedure ${name}`);
});

Deno.test("runbook procedure: clearing a member's bucket admits their next request", () =>
  withHarness({ env: { AI_AGENT_RATE_LIMIT_USER_MAX_REQUESTS: "2" } }, async (h) => {
    const m = await h.member();
    assertEquals([await statusOf(await ask(h, m)), await statusOf(await ask(h, m))], [
      "200",
      "200",
    ]);
    assertEquals(await statusOf(await ask(h, m)), "429 rate_limit");
    await run(h, "clear-bucket", m);
    assertEquals(await statusOf(await ask(h, m)), "200");
  }));

Deno.test("runbook procedure: expiring a member's opt-out lets them through", () =>
  withHarness({}, async (h) => {
    const m = await h.member();
    await h.sql`select ops.add_opt_out(${m.orgId}::uuid, ${m.userId}::uuid, null, 'stop', 'test')`;
    assertEquals(await statusOf(await ask(h, m)), "403 opt_out");
    await run(h, "expire-opt-out", m);
    assertEquals(await statusOf(await ask(h, m)), "200");
  }));

Deno.test("runbook procedure: a tenant's own policy raises its limit on the next request, audited", () =>
  withHarness({ env: { AI_AGENT_RATE_LIMIT_USER_MAX_REQUESTS: "2" } }, async (h) => {
    const m = await h.member();
    await ask(h, m).then(statusOf);
    await ask(h, m).then(statusOf);
    assertEquals(await statusOf(await ask(h, m)), "429 rate_limit");
    const shown = await run(h, "tenant-rollout", m);
    assert(shown.includes("user_max_requests"), "policy show lists the effective fields");
    assertEquals(await statusOf(await ask(h, m)), "200", "user_max_requests=20 applies at once");
    const audit = await h.sql`select action, actor from ops.policy_audit
      where org_id = ${m.orgId}::uuid order by id`;
    assertEquals(audit.map((a) => `${a.action} by ${a.actor}`), [
      "policy_set by ops@example.com",
      "budget_set by ops@example.com",
    ]);
  }));

Deno.test("runbook procedure: a channel throttle refuses that channel with scope channel; lifting it admits", () =>
  withHarness({ env: { AI_AGENT_RATE_LIMIT_MAX_REQUESTS: "1000" } }, async (h) => {
    const m = await h.member();
    const whatsapp = () =>
      h.call(
        { message: "hi", org_id: m.orgId, user_id: m.userId, channel: "whatsapp" },
        { token: h.secretKey },
      );
    try {
      await run(h, "channel-throttle", m);
      let refused: Response | undefined;
      for (let i = 0; i < 31 && !refused; i++) {
        const res = await whatsapp();
        if (res.status === 429) refused = res;
        else assertEquals(await statusOf(res), "200");
      }
      assert(refused, "the 31st request in the window is refused at the latest");
      assertEquals(
        (await refused.json()).error.message,
        "rate limit reached for the channel bucket",
      );
      assertEquals(await statusOf(await ask(h, m)), "200", "the app channel is not throttled");
    } finally {
      await run(h, "channel-throttle-lift", m);
    }
    await h.sql`select ops.clear_rate_limit('channel:whatsapp')`;
    assertEquals(await statusOf(await whatsapp()), "200");
  }));

Deno.test("runbook procedure: the kill switch answers 503 assistant_disabled with its message; on again answers", () =>
  withHarness({}, async (h) => {
    const m = await h.member();
    try {
      await run(h, "kill-switch-off", m);
      const res = await ask(h, m);
      const body = await res.json();
      assertEquals(res.status, 503);
      assertEquals(body.error.code, "assistant_disabled");
      assertEquals(
        body.error.message,
        "The assistant is unavailable. Your group's officers can help you meanwhile.",
      );
      assertEquals(h.openai.requests.length, 0, "no model call while switched off");
    } finally {
      await run(h, "kill-switch-on", m);
    }
    assertEquals(await statusOf(await ask(h, m)), "200");
  }));

Deno.test("runbook procedure: raising an enforced budget admits the tenant again", () =>
  withHarness({}, async (h) => {
    const m = await h.member();
    assertEquals(await statusOf(await ask(h, m)), "200");
    // This month's spend: one usage row of 10M prompt tokens (a few dollars at any price).
    const [{ model }] = await h.sql`select model from public.agent_usage_events
      where org_id = ${m.orgId}::uuid limit 1`;
    await h.sql`select public.agent_log_usage(${
      h.sql.json({
        request_id: crypto.randomUUID(),
        org_id: m.orgId,
        user_id: m.userId,
        model,
        prompt_tokens: 10_000_000,
        completion_tokens: 0,
        total_tokens: 10_000_000,
        latency_ms: 1,
        success: true,
      })
    })`;
    await h.sql`select ops.budget_set(${m.orgId}::uuid, 1, 'enforce', 'test')`;
    assertEquals(await statusOf(await ask(h, m)), "402 budget_exceeded");
    await run(h, "budget-raise", m);
    assertEquals(await statusOf(await ask(h, m)), "200");
  }));
