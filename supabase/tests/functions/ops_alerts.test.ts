/**
 * `ops alerts` against the real test database: open alerts with their ack,
 * mute and delivery state, the destinations' state, a test notification,
 * --by required on audited actions; and caller text printed inert (no
 * terminal escape sequence from a stored message reaches the terminal).
 */
import postgres from "postgres";
import { assert, assertEquals, assertMatch } from "./assert.ts";
import { testUrls } from "../support/function-harness.ts";
import {
  pauseScheduledCheck,
  resetAlerts,
  resumeScheduledCheck,
} from "../support/alerts-harness.ts";
import { runOps } from "../../../scripts/ops.ts";

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

Deno.test("ops alerts: open alerts with ack, mute and delivery state; test notifications; --by required", async () => {
  const sql = postgres(testUrls().databaseUrl, { max: 1, onnotice: () => {} });
  try {
    await pauseScheduledCheck(sql);
    await resetAlerts(sql);
    const [event] = await sql`insert into ops.alert_events
      (kind, subject, window_start, observed, threshold, raised_at, last_seen_at)
      values ('budget', 'global', date_trunc('month', now()), 12, 10, now(), now()) returning id`;
    let r = await ops("alerts");
    assertEquals(r.code, 0, r.err);
    assertMatch(r.out, /acknowledged_by +muted_until +delivery/);
    assertMatch(r.out, /recorded only, no destination/);
    assertMatch(r.out, /No destination: alerts are only recorded/);

    r = await ops("alerts", "test");
    assertEquals(r.code, 1);
    assertMatch(r.err, /no destination configured/);
    r = await ops("alerts", "test", "--destination", "email");
    assertEquals(r.code, 2);
    assertMatch(r.err, /--destination: slack, pagerduty, webhook/);

    await sql`insert into ops.alert_destinations (destination) values ('slack'), ('webhook')`;
    r = await ops("alerts", "test", "--destination", "webhook", "--json");
    assertEquals(r.code, 0, r.err);
    const queued = JSON.parse(r.out);
    assertEquals(queued.map((q: { destination: string }) => q.destination), ["webhook"]);
    assertMatch(queued[0].message_id, /^msg_/);

    r = await ops("alerts", "ack", String(event!.id));
    assertEquals(r.code, 2);
    assertMatch(r.err, /--by: required \(alerts ack is audited/);
    r = await ops("alerts", "ack", String(event!.id), "--by", "oncall@example.test");
    assertEquals(r.code, 0, r.err);
    r = await ops("alerts", "mute", "budget", "global", "--until", "2099-01-01T00:00:00Z");
    assertEquals(r.code, 2);
    r = await ops(
      "alerts",
      "mute",
      "budget",
      "global",
      "--until",
      "2099-01-01T00:00:00Z",
      "--by",
      "x",
    );
    assertEquals(r.code, 0, r.err);

    r = await ops("alerts", "--json");
    const shown = JSON.parse(r.out);
    const alert = shown.alerts.find((a: { id: number }) => a.id === Number(event!.id));
    assertEquals(alert.acknowledged_by, "oncall@example.test");
    assertEquals(alert.muted_until, "2099-01-01T00:00:00.000Z");
    assertEquals(alert.delivery, "muted, not sent");
    const webhook = shown.destinations.find((d: { destination: string }) =>
      d.destination === "webhook"
    );
    assertEquals(webhook.pending, 1);
    assert(webhook.reported_at !== null);
    assertEquals(
      shown.destinations.find((d: { destination: string }) => d.destination === "pagerduty")
        .reported_at,
      null,
    );
  } finally {
    await resetAlerts(sql);
    await resumeScheduledCheck(sql);
    await sql.end();
  }
});

Deno.test("ops: caller text is printed inert (session show and every table)", async () => {
  const sql = postgres(testUrls().databaseUrl, { max: 1, onnotice: () => {} });
  const org = crypto.randomUUID();
  const user = crypto.randomUUID();
  const session = crypto.randomUUID();
  const hostile = "hi\x1b]0;pwned\x07\x1b[2J\u202eevil\u0085";
  try {
    await sql`insert into auth.users (id) values (${user})`;
    await sql`insert into public.org_memberships (org_id, user_id) values (${org}, ${user})`;
    await sql`select public.agent_end_turn(${session}::uuid, ${org}::uuid, ${user}::uuid, 'app', ${hostile}, 'ok', 3600, 20)`;
    await sql`select ops.add_opt_out(${org}::uuid, null, null, ${hostile}, 'test', null)`;
    for (
      const argv of [
        ["session", "show", session],
        ["session", "show", session, "--json"],
        ["opt-out", "list", "--org", org],
      ]
    ) {
      const r = await ops(...argv);
      assertEquals(r.code, 0, r.err);
      // deno-lint-ignore no-control-regex -- no raw control character may reach the terminal
      assert(!/[\x00-\x09\x0b-\x1f\x7f-\x9f\u202e]/.test(r.out), `${argv.join(" ")}: ${r.out}`);
      assertMatch(r.out, /\\(x1b|u001b)\]0;pwned/);
    }
  } finally {
    await sql.end();
  }
});
