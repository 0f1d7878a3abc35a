/**
 * The command-line tools: the operator CLI against the real test database,
 * its HTML report in headless Chromium, and the conventions every CLI keeps
 * (--help, unknown options, --json numbers, flag errors), spawned as users run them.
 */
import postgres from "postgres";
import { assert, assertEquals, assertMatch } from "./assert.ts";
import { testUrls } from "../support/function-harness.ts";
import { which } from "../support/tools.ts";
import { runOps } from "../../../scripts/ops.ts";
import { commands as opsCommands } from "../../../scripts/ops/commands.ts";

const root = new URL("../../../", import.meta.url).pathname;

/** Runs `deno run scripts/<script> ...args` as a user would. */
async function cli(
  script: string,
  args: string[],
  env: Record<string, string> = {},
): Promise<{ code: number; out: string; err: string; ms: number }> {
  const started = performance.now();
  const r = await new Deno.Command(Deno.execPath(), {
    args: ["run", "--allow-all", "--no-check", `scripts/${script}`, ...args],
    cwd: root,
    env: { NO_COLOR: "1", ...env },
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).output();
  const text = (b: Uint8Array) => new TextDecoder().decode(b);
  return {
    code: r.code,
    out: text(r.stdout),
    err: text(r.stderr),
    ms: performance.now() - started,
  };
}

async function ops(...argv: string[]): Promise<{ code: number; out: string; err: string }> {
  let out = "";
  let err = "";
  const code = await runOps(
    [...argv, "--db", testUrls().databaseUrl],
    (s) => (out += s + "\n"),
    (s) => (err += s + "\n"),
  );
  return { code, out, err };
}

async function seed() {
  const sql = postgres(testUrls().databaseUrl, { max: 1, onnotice: () => {} });
  const org = crypto.randomUUID();
  const user = crypto.randomUUID();
  await sql`insert into auth.users (id) values (${user})`;
  await sql`insert into public.org_memberships (org_id, user_id) values (${org}, ${user})`;
  await sql`select public.agent_begin_turn(p_org_id => ${org}::uuid, p_user_id => ${user}::uuid, p_user_limit => 1)`;
  const session = crypto.randomUUID();
  await sql`select public.agent_end_turn(${session}::uuid, ${org}::uuid, ${user}::uuid, 'app', 'How much have I saved?', 'About 12,000.', 3600, 20)`;
  await sql`insert into public.agent_usage_events (request_id, org_id, user_id, model, prompt_tokens, completion_tokens, total_tokens, latency_ms, success, error_code, created_at)
            select 'ops-' || ${org}::text || '-' || i, ${org}::uuid, ${user}::uuid, 'gpt-4.1-mini', 500, 200, 700, 50 + i, i % 10 <> 0,
                   case when i % 10 = 0 then 'openai_error' end, now() - make_interval(mins => i * 5)
            from generate_series(1, 200) i`;
  return { sql, org, user, session };
}

Deno.test("ops CLI: buckets, clear-bucket, opt-out add/list/expire, session show, usage, alerts, purge", async () => {
  const { sql, org, user, session } = await seed();
  try {
    let r = await ops("buckets", `user:${user}`, "--json");
    assertEquals(r.code, 0, r.err);
    const [bucket] = JSON.parse(r.out);
    assertEquals(bucket.used, 1);
    assertEquals(bucket.remaining, 0);

    r = await ops("clear-bucket", `user:${user}`);
    assertEquals(r.code, 0, r.err);
    assertMatch(r.out, /true/);
    assertEquals(
      (await sql`select count(*)::int as n from ops.rate_limits where bucket_key = ${
        "user:" + user
      }`)[0]!.n,
      0,
    );

    r = await ops(
      "opt-out",
      "add",
      "--org",
      org,
      "--user",
      user,
      "--channel",
      "whatsapp",
      "--reason",
      "asked",
      "--by",
      "ops",
      "--json",
    );
    assertEquals(r.code, 0, r.err);
    const added = JSON.parse(r.out)[0];
    r = await ops("opt-out", "list", "--org", org);
    assertMatch(r.out, new RegExp(added.id));
    r = await ops("opt-out", "expire", added.id, "--by", "ops");
    assertEquals(r.code, 0, r.err);
    r = await ops("opt-out", "list", "--org", org, "--json");
    assertEquals(JSON.parse(r.out).length, 0, "expired opt-outs leave the active list");
    r = await ops("opt-out", "list", "--org", org, "--all", "--json");
    assertEquals(JSON.parse(r.out)[0].active, false, "but stay in the audit trail");

    r = await ops("session", "show", session);
    assertEquals(r.code, 0, r.err);
    assertMatch(r.out, /How much have I saved\?/);

    r = await ops("usage", "--since", "24h", "--org", org, "--json");
    assertEquals(r.code, 0, r.err);
    const [u] = JSON.parse(r.out);
    assertEquals(u.requests, 200, "--json prints numbers, not numeric strings");
    assertEquals(u.success_rate, 0.9);
    assertEquals(typeof u.latency_p50_ms, "number");
    assertEquals(typeof u.total_tokens, "number");
    r = await ops("usage", "--since", "24h", "--org", org, "--bucket", "1 hour");
    assertMatch(r.out, /success_rate/);

    r = await ops("alerts", "--check", "--json");
    assertEquals(r.code, 0, r.err);
    r = await ops("purge", "--json");
    assertEquals(r.code, 0, r.err);
    assert("messages_deleted" in JSON.parse(r.out)[0]);
  } finally {
    await sql.end();
  }
});

Deno.test("ops CLI: bad arguments are clear errors with exit code 2; database errors exit 1", async () => {
  let r = await ops("buckets", "everything");
  assertEquals(r.code, 2);
  assertMatch(r.err, /bucket key looks like/);
  r = await ops("nonsense");
  assertEquals(r.code, 2);
  assertMatch(r.err, /unknown command/);
  r = await ops("opt-out", "add", "--org", "not-a-uuid");
  assertEquals(r.code, 2);
  assertMatch(r.err, /^error: --org: not a UUID/);
  r = await ops("opt-out", "add", "--org", crypto.randomUUID(), "--expires", "tomorrow");
  assertEquals(r.code, 2);
  assertMatch(r.err, /^error: --expires: not an ISO timestamp: tomorrow/);
  r = await ops("usage", "--since", "forever");
  assertEquals(r.code, 2);
  assertMatch(r.err, /^error: --since: /);
  r = await ops("usage", "--bucket", "weekly");
  assertEquals(r.code, 2);
  assertMatch(r.err, /^error: --bucket: /);
  r = await ops("opt-out", "expire", crypto.randomUUID(), "--by", "ops");
  assertEquals(r.code, 1);
  assertMatch(r.err, /no opt-out with id/);
  r = await ops("usage", "--bogus-flag");
  assertEquals(r.code, 2);
  assertEquals(r.err.trim().split("\n").length, 1, r.err);
  assertMatch(r.err, /unknown option --bogus-flag/);
  // Each command takes its own flags: another command's flag is refused, naming the command's help.
  r = await ops("buckets", "user:" + crypto.randomUUID(), "--org", crypto.randomUUID());
  assertEquals(r.code, 2);
  assertMatch(r.err, /^error: unknown option --org \(ops buckets --help\)/);
  r = await ops("usage", "--html", "x.html");
  assertEquals(r.code, 2);
  assertMatch(r.err, /unknown option --html/);
});

Deno.test("ops CLI: every command's --help says what it does, its flags and an example", async () => {
  for (const name of Object.keys(opsCommands)) {
    const r = await ops(name, "--help");
    assertEquals(r.code, 0, `${name}: ${r.err}`);
    assertMatch(r.out, new RegExp(`^usage: deno task ops ${name}`), name);
    assertMatch(r.out, /\nexample:\n {2}npm run ops -- /, name);
    for (const flag of Object.keys(opsCommands[name]!.flags)) {
      assertMatch(r.out, new RegExp(`--${flag}\\b`), `${name} --help names --${flag}`);
    }
  }
});

const commands: Array<[string, string[]]> = [
  ["ops.ts", []],
  ...["buckets", "clear-bucket", "opt-out", "session", "usage", "alerts", "purge", "report"]
    .map((c): [string, string[]] => ["ops.ts", [c]]),
  ["ops.ts", ["opt-out", "add"]],
  ["token.ts", []],
  ["dev.ts", []],
  ["bench.ts", []],
  ["reliability.ts", []],
];

Deno.test("CLIs: --help exits 0 on every command and subcommand and prints its usage", async () => {
  const results = await Promise.all(commands.map(([s, a]) => cli(s, [...a, "--help"])));
  results.forEach((r, i) => {
    const name = commands[i]!.join(" ");
    assertEquals(r.code, 0, `${name} --help: ${r.err}`);
    assertMatch(r.out, /usage: /, name);
    assertEquals(r.err, "", name);
  });
});

Deno.test("CLIs: an unknown option is one line naming it, exit 2, no stack trace", async () => {
  const results = await Promise.all(commands.map(([s, a]) => cli(s, [...a, "--frobnicate"])));
  results.forEach((r, i) => {
    const name = commands[i]!.join(" ");
    assertEquals(r.code, 2, `${name}: ${r.err}`);
    assertEquals(r.err.trim().split("\n").length, 1, `${name}: ${r.err}`);
    assertMatch(r.err, /^error: unknown option --frobnicate/, name);
  });
});

Deno.test("CLIs: bad values name the flag; failures are one line without a stack trace", async () => {
  const local = await Deno.makeTempDir({ prefix: "agent-chat-cli-" });
  try {
    const cases: Array<[string, string[], number, RegExp]> = [
      ["token.ts", ["--hours", "forever"], 2, /^error: --hours: /],
      ["token.ts", ["--user", "bob"], 2, /^error: --user: not a UUID/],
      ["token.ts", [], 1, /^error: the local stack is not running/],
      ["reliability.ts", ["--profile", "huge"], 2, /^error: --profile: /],
    ];
    const results = await Promise.all(
      cases.map(([s, a]) => cli(s, a, { AGENT_CHAT_LOCAL_DIR: local })),
    );
    results.forEach((r, i) => {
      const [script, args, code, pattern] = cases[i]!;
      const name = `${script} ${args.join(" ")}`;
      assertEquals(r.code, code, `${name}: ${r.err}`);
      assertMatch(r.err, pattern, name);
      assertEquals(r.err.trim().split("\n").length, 1, `${name}: ${r.err}`);
    });
  } finally {
    await Deno.remove(local, { recursive: true });
  }
});

Deno.test("dev: a second start says where the running stack is, at once, and leaves it alone", async () => {
  const local = await Deno.makeTempDir({ prefix: "agent-chat-dev-" });
  try {
    // A running stack as `npm run dev` leaves it: this test process stands in for it.
    const state = JSON.stringify({
      databaseUrl: "postgres://postgres@127.0.0.1:1/postgres",
      redisUrl: "redis://127.0.0.1:1",
      functionUrl: "http://127.0.0.1:54321/functions/v1/agent-chat",
      secretKey: "sb_secret_x",
      pid: Deno.pid,
    });
    await Deno.writeTextFile(`${local}/dev.json`, state);
    const r = await cli("dev.ts", [], { AGENT_CHAT_LOCAL_DIR: local });
    assertEquals(r.code, 0, r.err);
    assertMatch(r.out, /already running at http:\/\/127\.0\.0\.1:54321\/functions\/v1\/agent-chat/);
    assert(r.ms < 10_000, `answered in ${r.ms.toFixed(0)} ms`);
    assertEquals(await Deno.readTextFile(`${local}/dev.json`), state, "state file untouched");
    const entries = [...Deno.readDirSync(local)].map((e) => e.name);
    assertEquals(entries, ["dev.json"], "started nothing");
  } finally {
    await Deno.remove(local, { recursive: true });
  }
});

Deno.test("ops report: a self-contained HTML page whose charts draw in headless Chromium", async () => {
  const { sql, org } = await seed();
  const dir = await Deno.makeTempDir({ prefix: "agent-chat-report-" });
  try {
    const file = `${dir}/report.html`;
    const r = await ops("report", "--html", file, "--since", "24h", "--org", org);
    assertEquals(r.code, 0, r.err);
    const html = await Deno.readTextFile(file);
    assert(!/(src|href)=["']https?:/.test(html), "no network resources");
    const chromium = await which("chromium") ?? await which("chromium-browser");
    assert(
      chromium,
      "chromium not found: install the Debian package `chromium` (scripts/setup.sh --with-browser)",
    );
    const flags = [
      "--headless",
      "--no-sandbox",
      "--disable-gpu",
      "--disable-quic",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
      `--user-data-dir=${dir}/profile`,
      "--window-size=1280,1600",
    ];
    const dom = await new Deno.Command(chromium, {
      args: [...flags, "--dump-dom", `file://${file}#hover`],
      stdout: "piped",
      stderr: "null",
    }).output();
    const text = new TextDecoder().decode(dom.stdout);
    // Five charts, and requests and success rate of the one org.
    assertMatch(text, /data-charts-drawn="7"/);
    assertMatch(text, /98% alert threshold/);
    assertMatch(text, /Errors by code/);
    assertMatch(text, /<td>openai_error<\/td><td>true<\/td><td>20<\/td>/);
    const attrs = (name: string) =>
      [...text.matchAll(new RegExp(`${name}="([^"]*)"`, "g"))].map((m) => m[1]!.split("|"));
    // Time axis: clock times (or days), at round steps.
    for (const ticks of attrs("data-x-ticks")) {
      assert(ticks.length >= 3, `x ticks ${ticks}`);
      for (const t of ticks) assertMatch(t, /^(\d\d:\d\d|[A-Z][a-z]{2} \d{1,2}( \d\d:\d\d)?)$/);
      const minutes = ticks.filter((t) => /^\d\d:\d\d$/.test(t)).map((t) => Number(t.slice(3)));
      assert(minutes.every((m) => m % 15 === 0), `round times: ${ticks}`);
    }
    // Value axes: evenly spaced round numbers (1, 2, 2.5 or 5 × 10^k apart).
    for (const ticks of attrs("data-y-ticks")) {
      const values = ticks.map((t) =>
        Number(t.replace(" %", "").replace("k", "e3").replace("M", "e6"))
      );
      assert(values.length >= 3 && values.every(Number.isFinite), `y ticks ${ticks}`);
      const step = values[1]! - values[0]!;
      const mantissa = step / 10 ** Math.floor(Math.log10(step));
      assert([1, 2, 2.5, 5].some((m) => Math.abs(mantissa - m) < 1e-9), `round step: ${ticks}`);
    }
    const points = attrs("data-series-points").flat().map(Number);
    assert(points.length >= 7, `every series has points (${points.length})`);
    assert(points.every((n) => n > 10), "each line has a point per 15-minute bucket");
    // Hover values: the legend shows the values under the cursor.
    const legendValues = [...text.matchAll(/class="u-value">([^<]*)</g)].map((m) => m[1]!);
    assert(legendValues.length >= 12, `legend values (${legendValues.length})`);
    assert(legendValues.every((v) => v !== "–" && v !== "--"), `hover values: ${legendValues}`);
    const shot = `${dir}/report.png`;
    await new Deno.Command(chromium, {
      args: [...flags, `--screenshot=${shot}`, `file://${file}`],
      stdout: "null",
      stderr: "null",
    }).output();
    const png = await Deno.readFile(shot);
    assertEquals([...png.slice(1, 4)].map((b) => String.fromCharCode(b)).join(""), "PNG");
    assert(png.length > 20_000, `a screenshot with content (${png.length} bytes) in ${shot}`);
  } finally {
    await sql.end();
    // AGENT_CHAT_KEEP_SCREENSHOT=1 keeps the page and its screenshot to look at.
    if (Deno.env.get("AGENT_CHAT_KEEP_SCREENSHOT") === "1") {
      console.log(`report screenshot: ${dir}/report.png`);
    } else await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("reliability: SIGTERM stops the stack it started (PostgreSQL, Redis, processes) and exits", async () => {
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", "--allow-all", "--no-check", "scripts/reliability.ts", "--profile", "ci"],
    cwd: root,
    env: { NO_COLOR: "1" },
    stdin: "null",
    stdout: "null",
    stderr: "piped",
  }).spawn();
  const lines = child.stderr.pipeThrough(new TextDecoderStream()).getReader();
  let text = "";
  let ports: number[] = [];
  const deadline = Date.now() + 60_000;
  while (Date.now() < deadline) {
    const { value, done } = await lines.read();
    if (done) break;
    text += value;
    const m = /postgres postgres:\/\/\S+:(\d+)\/\S+ redis redis:\/\/\S+:(\d+)/.exec(text);
    if (m) {
      ports = [Number(m[1]), Number(m[2])];
      break;
    }
  }
  assertEquals(ports.length, 2, `the stack started: ${text}`);
  child.kill("SIGTERM");
  (async () => {
    while (!(await lines.read()).done) { /* drain */ }
  })().catch(() => {});
  const status = await child.status;
  assertEquals(status.code, 130);
  for (const port of ports) {
    const open = await Deno.connect({ hostname: "127.0.0.1", port }).then(
      (c) => (c.close(), true),
      () => false,
    );
    assertEquals(open, false, `port ${port} is closed`);
  }
});
