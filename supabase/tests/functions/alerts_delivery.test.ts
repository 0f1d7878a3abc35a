/**
 * agent-alerts against real Postgres (through the PostgREST stand-in) and
 * local Slack, PagerDuty and Standard Webhooks receivers that check every
 * payload against the provider's contract: a tenant failing while the global
 * rate holds, the resolve with the trigger's dedup_key, a budget passing 85%
 * then 100%, and four cycles at once.
 */
import { assert, assertEquals, assertMatch } from "./assert.ts";
import { type AlertsHarness, startAlertsHarness } from "../support/alerts-harness.ts";

async function cycleOk(h: AlertsHarness) {
  const response = await h.cycle();
  const body = await response.json();
  assertEquals(response.status, 200, JSON.stringify(body));
  return body;
}

function noContractViolations(h: AlertsHarness) {
  for (const r of [h.slack, h.pagerduty, h.webhook]) assertEquals(r.rejected, []);
}

/** What each receiver accepted about one subject, in order. */
function about(h: AlertsHarness, subject: string) {
  const slack = h.slack.accepted.filter((r) => r.body.text.includes(subject));
  const pagerduty = h.pagerduty.accepted.filter((r) =>
    r.body.event_action === "resolve" || r.body.payload.custom_details.subject === subject
  );
  const webhook = h.webhook.accepted.filter((r) => r.body.data.subject === subject);
  return { slack, pagerduty, webhook };
}

Deno.test("alerts: a tenant failing while the global rate holds raises its own alert on every destination, then resolves with the trigger's dedup_key", async () => {
  const h = await startAlertsHarness({ start: "2041-01-15T12:00:00Z" });
  try {
    const failing = crypto.randomUUID();
    const healthy = crypto.randomUUID();
    await h.usage(failing, 12, false);
    await h.usage(healthy, 800, true);
    const first = await cycleOk(h);
    assertEquals(first.destinations, ["slack", "pagerduty", "webhook"]);
    assertEquals(first.check.raised, 1, "only the tenant's alert: 800/812 = 98.5% globally");
    const subject = `org:${failing}`;
    const raised = about(h, subject);
    noContractViolations(h);
    assertEquals([raised.slack.length, raised.pagerduty.length, raised.webhook.length], [1, 1, 1]);
    const slackText = raised.slack[0]!.body.text as string;
    assertMatch(slackText, /RAISED/);
    assertMatch(slackText, /success_rate/);
    assertMatch(slackText, /observed 0\.00% vs threshold 98\.00%/);
    assert(JSON.stringify(raised.slack[0]!.body.blocks).includes("Alert: success rate"), "runbook");
    const trigger = raised.pagerduty[0]!.body;
    assertEquals(trigger.event_action, "trigger");
    assertEquals(trigger.payload.severity, "critical");
    assertEquals(trigger.payload.custom_details.org_id, failing);
    const hook = raised.webhook[0]!;
    assertEquals(hook.body.type, "alert.raised");
    assertEquals(hook.body.data.org_id, failing);
    assertMatch(hook.headers["webhook-id"]!, /^msg_[0-9a-f]{32}$/);

    // Nothing is sent again while the condition holds.
    h.advance(60);
    const second = await cycleOk(h);
    assertEquals([second.check.raised, second.claimed], [0, 0]);

    // The failures leave the window: resolved, PagerDuty with the trigger's key.
    h.advance(20 * 60);
    const third = await cycleOk(h);
    assertEquals(third.check.resolved, 1);
    noContractViolations(h);
    const resolve = h.pagerduty.accepted.at(-1)!.body;
    assertEquals(resolve.event_action, "resolve");
    assertEquals(resolve.dedup_key, trigger.dedup_key);
    assertEquals(h.webhook.accepted.at(-1)!.body.type, "alert.resolved");
    assertMatch(h.slack.accepted.at(-1)!.body.text, /RESOLVED/);
    assert(
      h.webhook.accepted.at(-1)!.headers["webhook-id"] !== hook.headers["webhook-id"],
      "a new notification, a new webhook-id",
    );
  } finally {
    await h.stop();
  }
});

Deno.test("alerts: a budget passing 85% warns, passing 100% raises (PagerDuty severities warning then error)", async () => {
  const h = await startAlertsHarness({ start: "2041-02-10T12:00:00Z" });
  try {
    const org = crypto.randomUUID();
    await h.sql`insert into ops.budgets (org_id, monthly_usd) values (${org}, 10)`;
    await h
      .sql`insert into ops.spend_counters (org_id, month, usd) values (${org}, '2041-02-01', 8.5)`;
    const warned = await cycleOk(h);
    assertEquals(warned.check.raised, 1);
    noContractViolations(h);
    const subject = `org:${org}`;
    const first = about(h, subject);
    assertEquals(first.webhook.map((r) => r.body.type), ["alert.warning"]);
    assertEquals(first.pagerduty.map((r) => r.body.payload.severity), ["warning"]);
    assertMatch(
      first.slack[0]!.body.text,
      /WARNING.*budget_warning.*observed \$8\.50 vs threshold \$8\.00/,
    );

    await h.sql`update ops.spend_counters set usd = 10.4 where org_id = ${org}`;
    h.advance(60);
    const over = await cycleOk(h);
    assertEquals(over.check.raised, 1, "the overrun; the open warning is not sent again");
    noContractViolations(h);
    const second = about(h, subject);
    assertEquals(second.webhook.map((r) => r.body.type), ["alert.warning", "alert.raised"]);
    assertEquals(second.pagerduty.map((r) => r.body.payload.severity), ["warning", "error"]);
    assert(second.pagerduty[0]!.body.dedup_key !== second.pagerduty[1]!.body.dedup_key);
    assertMatch(
      second.slack[1]!.body.text,
      /RAISED.*budget .*observed \$10\.40 vs threshold \$10\.00/,
    );
    await h.sql`delete from ops.budgets where org_id = ${org}`;
  } finally {
    await h.stop();
  }
});

Deno.test("alerts: four cycles at once never send one notification twice", async () => {
  const h = await startAlertsHarness({ start: "2041-03-10T12:00:00Z" });
  try {
    const orgs = Array.from({ length: 3 }, () => crypto.randomUUID());
    for (const org of orgs) await h.usage(org, 10, false);
    await h.usage(crypto.randomUUID(), 2000, true);
    const responses = await Promise.all([h.cycle(), h.cycle(), h.cycle(), h.cycle()]);
    assertEquals(responses.map((r) => r.status), [200, 200, 200, 200]);
    const bodies = await Promise.all(responses.map((r) => r.json()));
    assertEquals(bodies.reduce((n, b) => n + b.check.raised, 0), 3, "each alert raised once");
    assertEquals(bodies.reduce((n, b) => n + b.claimed, 0), 9, "3 alerts x 3 destinations");
    noContractViolations(h);
    for (const r of [h.slack, h.pagerduty, h.webhook]) assertEquals(r.requests.length, 3);
    const ids = h.webhook.accepted.map((r) => r.headers["webhook-id"]);
    assertEquals(new Set(ids).size, 3);
    const keys = h.pagerduty.accepted.map((r) => r.body.dedup_key);
    assertEquals(new Set(keys).size, 3);
    // And again, at once: nothing is due.
    const again = await Promise.all([h.cycle(), h.cycle(), h.cycle(), h.cycle()]);
    const claimed = (await Promise.all(again.map((r) => r.json()))).map((b) => b.claimed);
    assertEquals(claimed, [0, 0, 0, 0]);
    for (const r of [h.slack, h.pagerduty, h.webhook]) assertEquals(r.requests.length, 3);
  } finally {
    await h.stop();
  }
});

Deno.test("alerts: with no destination an alert is only recorded, and the open alerts say so", async () => {
  const h = await startAlertsHarness({
    start: "2041-04-10T12:00:00Z",
    env: {
      AI_AGENT_ALERT_SLACK_WEBHOOK_URL: "",
      AI_AGENT_ALERT_PAGERDUTY_ROUTING_KEY: "",
      AI_AGENT_ALERT_PAGERDUTY_URL: "",
      AI_AGENT_ALERT_WEBHOOK_URL: "",
      AI_AGENT_ALERT_WEBHOOK_SECRET: "",
    },
  });
  try {
    const org = crypto.randomUUID();
    await h.usage(org, 10, false);
    const body = await cycleOk(h);
    assertEquals([body.destinations, body.claimed], [[], 0]);
    const [row] = await h.sql`select delivery from ops.open_alerts where subject = ${"org:" + org}`;
    assertEquals(row?.delivery, "recorded only, no destination");
    for (const r of [h.slack, h.pagerduty, h.webhook]) assertEquals(r.requests.length, 0);
  } finally {
    await h.stop();
  }
});
