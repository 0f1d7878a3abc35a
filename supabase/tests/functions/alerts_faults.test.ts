/**
 * agent-alerts when destinations fail: a webhook failing twice then
 * succeeding (the same webhook-id and body every time, each attempt signed),
 * and a 5xx, a hanging receiver and a refused connection in one cycle (each
 * bounded by the timeout, none holding the others), failing for good after
 * the last attempt and alerting on the other destinations.
 */
import { Webhook } from "standardwebhooks";
import { assert, assertEquals, assertMatch } from "./assert.ts";
import { type AlertsHarness, startAlertsHarness } from "../support/alerts-harness.ts";
import { refusedUrl } from "../stand-ins/alert-receivers.ts";

async function cycle(h: AlertsHarness) {
  const response = await h.cycle();
  const body = await response.json();
  assertEquals(response.status, 200, JSON.stringify(body));
  return body;
}

async function outbox(h: AlertsHarness, destination: string) {
  return await h.sql`select o.status, o.attempts, o.last_error, e.kind, e.subject
    from ops.alert_outbox o left join ops.alert_events e on e.id = o.alert_id
    where o.destination = ${destination} order by o.id`;
}

Deno.test("alerts: a webhook failing twice then succeeding gets the same webhook-id and body, signed each time", async () => {
  const h = await startAlertsHarness({ start: "2042-01-10T12:00:00Z" });
  try {
    const org = crypto.randomUUID();
    await h.usage(org, 10, false);
    await h.usage(crypto.randomUUID(), 1000, true);
    h.webhook.fail({ status: 500 }, { status: 503 });
    const first = await cycle(h);
    assertEquals(first.sent, { delivered: 2, error: 1 });
    h.advance(10);
    assertEquals((await cycle(h)).claimed, 0, "not before the backoff (30 s)");
    h.advance(25);
    assertEquals((await cycle(h)).sent, { error: 1 }, "second attempt, 503");
    h.advance(45);
    assertEquals((await cycle(h)).claimed, 0, "the second retry waits 60 s");
    h.advance(20);
    assertEquals((await cycle(h)).sent, { delivered: 1 });

    const attempts = h.webhook.requests;
    assertEquals(attempts.length, 3);
    assertEquals(new Set(attempts.map((r) => r.headers["webhook-id"])).size, 1);
    assertEquals(new Set(attempts.map((r) => r.raw)).size, 1, "the same body");
    const verifier = new Webhook(h.webhookSecret);
    for (const r of attempts) verifier.verify(r.raw, r.headers);
    assertEquals(h.webhook.accepted.length, 1);
    assertEquals(h.webhook.rejected, []);
    assertEquals(h.slack.requests.length, 1, "the other destinations got it once");
    assertEquals(h.pagerduty.requests.length, 1);
    const [row] = await outbox(h, "webhook");
    assertEquals([row?.status, row?.attempts], ["delivered", 3]);
  } finally {
    await h.stop();
  }
});

Deno.test("alerts: a 5xx, a hanging receiver and a refused connection: bounded, independent, then failed and alerted elsewhere", async () => {
  const h = await startAlertsHarness({
    start: "2042-02-10T12:00:00Z",
    env: {
      AI_AGENT_ALERT_MAX_ATTEMPTS: "2",
      AI_AGENT_ALERT_TIMEOUT_MS: "400",
      AI_AGENT_ALERT_WEBHOOK_URL: refusedUrl(),
    },
  });
  try {
    const org = crypto.randomUUID();
    await h.usage(org, 10, false);
    await h.usage(crypto.randomUUID(), 1000, true);
    h.slack.fail("hang", { status: 502 });
    h.pagerduty.fail({ status: 500 });
    const started = performance.now();
    const first = await cycle(h);
    const took = performance.now() - started;
    assertEquals(first.sent, { error: 3 });
    assert(took < 10_000, `the hanging receiver is given up after its timeout (took ${took} ms)`);
    assertEquals(h.pagerduty.requests.length, 1);
    const held = h.pagerduty.requests[0]!.at - h.slack.requests[0]!.at;
    assert(held < 400, `pagerduty was sent beside the hanging slack, not after it (${held} ms)`);
    const [alert] = await h.sql`select delivery from ops.open_alerts where subject = ${
      "org:" + org
    }`;
    assertMatch(alert!.delivery, /slack retrying \(1 attempts, no answer within 400 ms\)/);
    assertMatch(alert!.delivery, /pagerduty retrying \(1 attempts, HTTP 500/);
    assertMatch(alert!.delivery, /webhook retrying \(1 attempts, .*(refused|connect)/i);

    // The last attempt: slack 502 and webhook refused fail for good,
    // pagerduty answers this time.
    h.advance(31);
    const second = await cycle(h);
    assertEquals(second.statuses, { failed: 2, delivered: 1 });
    assertEquals((await outbox(h, "slack"))[0]?.status, "failed");
    const failures = await h.sql`select subject from ops.open_alerts
      where kind = 'delivery_failed' order by subject`;
    assertEquals(failures.map((r) => r.subject), ["destination:slack", "destination:webhook"]);

    // Each delivery_failed alert goes to the other destinations: pagerduty
    // hears of both; slack (working again) hears of the webhook's, which
    // also ends its own delivery_failed alert.
    h.advance(1);
    await cycle(h);
    const pdSubjects = h.pagerduty.accepted
      .filter((r) => r.body.event_action === "trigger")
      .map((r) => r.body.payload.custom_details.subject)
      .sort();
    assertEquals(pdSubjects, ["destination:slack", "destination:webhook", `org:${org}`]);
    assertEquals(h.pagerduty.rejected, []);
    const slackTexts = h.slack.accepted.map((r) => r.body.text as string);
    assert(
      slackTexts.some((t) => /delivery_failed.*destination:webhook/.test(t)),
      slackTexts.join(),
    );
    const open = await h.sql`select subject from ops.open_alerts where kind = 'delivery_failed'`;
    assertEquals(open.map((r) => r.subject), ["destination:webhook"]);
  } finally {
    await h.stop();
  }
});
