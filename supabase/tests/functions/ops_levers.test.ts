/** The operator levers' CLI: validation names the argument, SQL refusals are one line, JSON is typed. */
import { assert, assertEquals, assertMatch } from "./assert.ts";
import { testUrls } from "../support/function-harness.ts";
import { runOps } from "../../../scripts/ops.ts";

async function ops(...argv: string[]) {
  let out = "";
  let err = "";
  const code = await runOps(
    [...argv, "--db", testUrls().databaseUrl],
    (s) => (out += s + "\n"),
    (s) => (err += s + "\n"),
  );
  return { code, out, err };
}

const org = () => crypto.randomUUID();

Deno.test("ops levers: bad arguments exit 2 naming the argument", async () => {
  for (
    const [argv, pattern] of [
      [["policy", "set", "--org", org(), "user_max_requests=-3"], /user_max_requests/],
      [["policy", "set", "--org", org(), "enabled=maybe"], /enabled: true, false or null/],
      [["policy", "set", "--org", org()], /field=value/],
      [["policy", "set", "--org", "nope", "org_max_requests=5"], /--org: not a UUID/],
      [["switch", "on", "--message", "x"], /--message: only with switch off/],
      [["budget", "set", "10", "--mode", "strict"], /--mode: alert or enforce/],
      [["budget", "set", "lots"], /monthly USD/],
      [["alerts", "mute", "budget", "global"], /--until: missing/],
      [["alerts", "ack", "x"], /alert id/],
      [["policy", "set", "--org", org(), "org_max_requests=5"], /--by: required \(policy set/],
      [["budget", "set", "10"], /--by: required \(budget set/],
      [["switch", "off"], /--by: required \(switch off/],
      [["opt-out", "add", "--org", org()], /--by: required \(opt-out add/],
      [["policy", "bogus"], /policy needs show, set, clear or audit/],
      [
        ["policy", "set", "--org", org(), "user_tokens_per_day=500"],
        /user_tokens_per_day=500: no turn could ever fit; the smallest turn reserves \d+ tokens/,
      ],
    ] as Array<[string[], RegExp]>
  ) {
    const r = await ops(...argv);
    assertEquals(r.code, 2, `${argv.join(" ")}: ${r.err}`);
    assertMatch(r.err, pattern);
    assertEquals(r.err.trim().split("\n").length, 1, "one line, no stack trace");
  }
});

Deno.test("ops levers: the database's refusals are one line and exit 1", async () => {
  const r = await ops("policy", "set", "--org", org(), "org_max_request=5", "--by", "t");
  assertEquals(r.code, 1, r.err);
  assertMatch(r.err, /unknown policy field\(s\): org_max_request/);
  const ack = await ops("alerts", "ack", "999999999", "--by", "t");
  assertEquals(ack.code, 1);
  assertMatch(ack.err, /no alert with id 999999999/);
});

Deno.test("ops levers: set, show as JSON with numbers, audit, clear", async () => {
  const id = org();
  assertEquals(
    (await ops("policy", "set", "--org", id, "org_max_requests=600", "note=pilot", "--by", "t"))
      .code,
    0,
  );
  const shown = JSON.parse((await ops("policy", "show", "--org", id, "--json")).out);
  assertEquals(shown.effective.org_max_requests, { value: 600, from: "org" });
  const budget = JSON.parse(
    (await ops("budget", "set", "12.5", "--org", id, "--json", "--by", "t")).out,
  );
  assertEquals(budget[0].monthly_usd, 12.5);
  assertEquals(budget[0].mode, "alert");
  const audit = JSON.parse((await ops("policy", "audit", "--org", id, "--json")).out);
  assertEquals(audit.map((a: { action: string }) => a.action), ["budget_set", "policy_set"]);
  assert(audit.every((a: { actor: string }) => a.actor.length > 0), "every change names its actor");
  const cleared = JSON.parse(
    (await ops("policy", "clear", "--org", id, "--json", "--by", "t")).out,
  );
  assertEquals(cleared[0].cleared, true);
  await ops("budget", "clear", "--org", id, "--by", "t");
});

Deno.test("ops report: the tenants table shows a tenant's policy and budget", async () => {
  const id = org();
  await ops("policy", "set", "--org", id, "org_max_requests=321", "--by", "t");
  await ops("budget", "set", "42", "--org", id, "--mode", "enforce", "--by", "t");
  const dir = await Deno.makeTempDir({ prefix: "agent-chat-levers-" });
  try {
    const r = await ops("report", "--html", `${dir}/r.html`, "--since", "1h", "--org", id);
    assertEquals(r.code, 0, r.err);
    const html = await Deno.readTextFile(`${dir}/r.html`);
    const section = html.slice(html.indexOf("Tenants: policy"));
    assert(section.includes(id), "the tenant's row");
    assert(section.includes("321") && section.includes("enforce"), "its limit and budget mode");
  } finally {
    await Deno.remove(dir, { recursive: true });
    await ops("policy", "clear", "--org", id, "--by", "t");
    await ops("budget", "clear", "--org", id, "--by", "t");
  }
});
