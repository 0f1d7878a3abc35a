/**
 * The whole path, as `npm run dev` serves it: a member's requests fail at
 * the model (agent-chat answers 502 and logs each one), the gateway's
 * agent-alerts (POST with the secret key, what pg_cron does every minute)
 * raises the org's success-rate alert, and Slack, PagerDuty and the webhook
 * receivers get a message naming the org. Then the same with the usage log
 * off: no usage rows, so no success-rate alert (the runbook says so).
 */
import { assertEquals, assertMatch } from "./assert.ts";
import { startHarness } from "../support/function-harness.ts";
import {
  startPagerDutyReceiver,
  startSlackReceiver,
  startWebhookReceiver,
} from "../stand-ins/alert-receivers.ts";
import { newWebhookSecret, resetAlerts } from "../support/alerts-harness.ts";

async function failingRequestsThenCycle(usageLog: boolean) {
  const slack = startSlackReceiver();
  const pagerduty = startPagerDutyReceiver();
  const secret = newWebhookSecret();
  const webhook = startWebhookReceiver(secret);
  const h = await startHarness({
    env: {
      AI_AGENT_USAGE_LOG_ENABLED: String(usageLog),
      // Ten failures in a row: the breaker stays closed, so each is a 502 openai_error.
      AI_AGENT_BREAKER_FAILURES: "100",
      AI_AGENT_ALERT_SLACK_WEBHOOK_URL: slack.url,
      AI_AGENT_ALERT_PAGERDUTY_ROUTING_KEY: "R0UT1NGKEY0000000000000000000000",
      AI_AGENT_ALERT_PAGERDUTY_URL: pagerduty.url,
      AI_AGENT_ALERT_WEBHOOK_URL: webhook.url,
      AI_AGENT_ALERT_WEBHOOK_SECRET: secret,
    },
  });
  try {
    await resetAlerts(h.sql);
    const m = await h.member();
    for (let i = 0; i < 10; i++) h.openai.script({ kind: "error", status: 500 });
    for (let i = 0; i < 10; i++) {
      const r = await h.call({ message: `hello ${i}`, org_id: m.orgId }, { token: m.token });
      assertEquals(r.status, 502);
      await r.body?.cancel();
    }
    const response = await fetch(`${h.gateway.functionsUrl}/agent-alerts`, {
      method: "POST",
      headers: { authorization: `Bearer ${h.secretKey}` },
    });
    assertEquals(response.status, 200);
    await response.json();
    const subject = `org:${m.orgId}`;
    const received = {
      slack: slack.accepted.filter((r) => r.body.text.includes(subject)),
      pagerduty: pagerduty.accepted.filter((r) => r.body.payload?.group === subject),
      webhook: webhook.accepted.filter((r) => r.body.data.subject === subject),
    };
    for (const r of [slack, pagerduty, webhook]) assertEquals(r.rejected, []);
    return { received, orgId: m.orgId };
  } finally {
    await resetAlerts(h.sql);
    await h.stop();
    await Promise.all([slack.stop(), pagerduty.stop(), webhook.stop()]);
  }
}

Deno.test("alerts end to end: failing requests through agent-chat reach Slack, PagerDuty and the webhook", async () => {
  const { received, orgId } = await failingRequestsThenCycle(true);
  assertEquals(
    [received.slack.length, received.pagerduty.length, received.webhook.length],
    [1, 1, 1],
  );
  assertMatch(received.slack[0]!.body.text, /\[RAISED\] agent-chat success_rate/);
  assertMatch(received.slack[0]!.body.text, /observed 0\.00% vs threshold 98\.00%/);
  assertEquals(received.pagerduty[0]!.body.payload.custom_details.org_id, orgId);
  assertEquals(received.webhook[0]!.body.type, "alert.raised");
  assertEquals(received.webhook[0]!.body.data.details.failures_by_code, { openai_error: 10 });
});

Deno.test("alerts end to end: with the usage log off the requests leave no rows and raise no success-rate alert", async () => {
  const { received } = await failingRequestsThenCycle(false);
  assertEquals(
    [received.slack.length, received.pagerduty.length, received.webhook.length],
    [0, 0, 0],
  );
});
