/**
 * agent-alerts without a database: the HTTP contract (405, 401, 200), the
 * configuration rules, each destination's message checked against the
 * receivers' contract checks, and the order and isolation of sends.
 */
import { Webhook } from "standardwebhooks";
import { assert, assertEquals, assertMatch } from "./assert.ts";
import { createAlertsHandler } from "../../functions/agent-alerts/handler.ts";
import { ConfigError, loadAlertsConfig } from "../../functions/agent-alerts/config.ts";
import { deliver } from "../../functions/agent-alerts/cycle.ts";
import { slackMessage } from "../../functions/agent-alerts/slack.ts";
import { pagerDutyEvent } from "../../functions/agent-alerts/pagerduty.ts";
import { createWebhookDestination } from "../../functions/agent-alerts/webhook.ts";
import type {
  ClaimedNotification,
  Destination,
  NotificationState,
} from "../../functions/agent-alerts/notification.ts";
import { validatePagerDuty, validateSlack, validateWebhook } from "../stand-ins/alert-receivers.ts";
import { newWebhookSecret } from "../support/alerts-harness.ts";

const KEY = "sb_secret_unit";
const summary = {
  destinations: [],
  check: { raised: 0, resolved: 0, muted: 0, open: 0 },
  claimed: 0,
  sent: {},
  statuses: {},
  ms: 1,
};

function handler(cycles: { n: number } = { n: 0 }) {
  return createAlertsHandler({
    serviceKeys: [KEY],
    log: () => {},
    runCycle: () => {
      cycles.n++;
      return Promise.resolve(summary);
    },
  });
}

const post = (headers: Record<string, string> = {}, method = "POST") =>
  new Request("http://localhost/functions/v1/agent-alerts", { method, headers });

Deno.test("alerts handler: POST with the service key runs one cycle; anything else does not", async () => {
  const cycles = { n: 0 };
  const h = handler(cycles);
  const ok = await h(post({ authorization: `Bearer ${KEY}` }));
  assertEquals(ok.status, 200);
  assertEquals((await ok.json()).check, summary.check);
  assertEquals((await h(post({ apikey: KEY }))).status, 200, "the apikey header too");
  const userToken = "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJ4Iiwicm9sZSI6ImF1dGhlbnRpY2F0ZWQifQ.c2ln";
  for (
    const [request, status] of [
      [post(), 401],
      [post({ authorization: `Bearer ${userToken}` }), 401],
      [post({ authorization: `Bearer ${KEY}x` }), 401],
      [post({ authorization: `Bearer ${KEY}` }, "GET"), 405],
      [post({ authorization: `Bearer ${KEY}` }, "PUT"), 405],
    ] as const
  ) {
    const response = await h(request);
    assertEquals(response.status, status);
    const body = await response.json();
    assertMatch(body.error.code, status === 401 ? /^unauthorized$/ : /^method_not_allowed$/);
  }
  assertEquals(cycles.n, 2);
});

Deno.test("alerts handler: a failed cycle is a 500 without detail", async () => {
  const h = createAlertsHandler({
    serviceKeys: [KEY],
    log: () => {},
    runCycle: () => Promise.reject(new Error("connection to 10.0.0.1 refused")),
  });
  const response = await h(post({ authorization: `Bearer ${KEY}` }));
  assertEquals(response.status, 500);
  assert(!(await response.text()).includes("10.0.0.1"));
});

const base = { SUPABASE_URL: "https://abc.supabase.co", SUPABASE_SERVICE_ROLE_KEY: KEY };

function problems(env: Record<string, string>): string[] {
  try {
    loadAlertsConfig({ ...base, ...env });
    return [];
  } catch (error) {
    assert(error instanceof ConfigError);
    return error.problems;
  }
}

Deno.test("alerts config: destinations are https or loopback http; the webhook needs a whsec_ secret", () => {
  const none = loadAlertsConfig(base);
  assertEquals([none.slack, none.pagerduty, none.webhook], [undefined, undefined, undefined]);
  assertEquals([none.retryBaseSeconds, none.maxAttempts], [30, 8]);
  const pd = loadAlertsConfig({ ...base, AI_AGENT_ALERT_PAGERDUTY_ROUTING_KEY: "rk" }).pagerduty;
  assertEquals(pd?.url, "https://events.pagerduty.com/v2/enqueue");
  assertEquals(problems({ AI_AGENT_ALERT_SLACK_WEBHOOK_URL: "http://127.0.0.1:9/x" }), []);
  assertMatch(
    problems({ AI_AGENT_ALERT_SLACK_WEBHOOK_URL: "http://hooks.example.com/x" }).join(),
    /AI_AGENT_ALERT_SLACK_WEBHOOK_URL: must be https/,
  );
  assertMatch(
    problems({ AI_AGENT_ALERT_WEBHOOK_URL: "https://example.com/hook" }).join(),
    /AI_AGENT_ALERT_WEBHOOK_SECRET: required/,
  );
  assertMatch(
    problems({
      AI_AGENT_ALERT_WEBHOOK_URL: "https://example.com/hook",
      AI_AGENT_ALERT_WEBHOOK_SECRET: "whsec_c2hvcnQ=",
    }).join(),
    /24 to 64 bytes/,
  );
  assertMatch(problems({ AI_AGENT_ALERT_MAX_ATTEMPTS: "0" }).join(), /AI_AGENT_ALERT_MAX_ATTEMPTS/);
});

function notification(
  state: NotificationState,
  kind = "success_rate",
  extra: Partial<ClaimedNotification> = {},
): ClaimedNotification {
  return {
    id: 7,
    claim_token: crypto.randomUUID(),
    state,
    destination: "slack",
    message_id: "msg_0123456789abcdef0123456789abcdef",
    dedup_key: "agent-chat/alert/41",
    attempts: 1,
    created_at: "2041-01-01T00:00:00Z",
    payload: {
      alert_id: 41,
      state,
      kind,
      subject: "org:<b>&</b>",
      org_id: null,
      observed: 0.5,
      threshold: 0.98,
      details: { served: 20 },
      raised_at: "2041-01-01T00:00:00Z",
    },
    ...extra,
  };
}

const asReceived = (body: unknown) => ({ at: 0, headers: {}, raw: JSON.stringify(body), body });

Deno.test("alerts payloads: Slack, PagerDuty and webhook messages pass the providers' contracts", async () => {
  for (const state of ["raised", "warning", "resolved", "test"] as const) {
    const kind = state === "test" ? "test" : "budget_warning";
    const slack = slackMessage(notification(state, kind), "https://example.com/ops");
    assertEquals(validateSlack(asReceived(slack)), []);
    assert(slack.text.includes("&lt;b&gt;&amp;"), "mrkdwn control characters escaped");
    const pd = pagerDutyEvent(notification(state, kind), { routingKey: "rk", source: "abc" });
    assertEquals(validatePagerDuty(asReceived(pd)), []);
    assertEquals(pd.event_action, state === "resolved" ? "resolve" : "trigger");
    assertEquals(pd.dedup_key, "agent-chat/alert/41");
  }
  const severities = (["raised", "warning", "test"] as const).map((s) =>
    (pagerDutyEvent(notification(s), { routingKey: "rk", source: "abc" }) as {
      payload: { severity: string };
    }).payload.severity
  );
  assertEquals(severities, ["critical", "warning", "info"]);

  const secret = newWebhookSecret();
  let sent: Request | undefined;
  const destination = createWebhookDestination({
    url: "http://127.0.0.1:1/hook",
    secret,
    timeoutMs: 1000,
    fetch: (input, init) => {
      sent = new Request(input, init);
      return Promise.resolve(new Response(null, { status: 204 }));
    },
  });
  assertEquals((await destination.send(notification("warning"))).outcome, "delivered");
  const raw = await sent!.text();
  const headers = Object.fromEntries(sent!.headers);
  assertEquals(validateWebhook(secret)({ at: 0, headers, raw, body: JSON.parse(raw) }), []);
  assertEquals(JSON.parse(raw).type, "alert.warning");
  assertEquals(headers["webhook-id"], "msg_0123456789abcdef0123456789abcdef");
  new Webhook(secret).verify(raw, headers);
});

Deno.test("alerts cycle: in order per destination, all destinations at once, the rest skipped after a failure", async () => {
  const log: string[] = [];
  const fake = (name: Destination["name"], fail: number[], delayMs: number): Destination => ({
    name,
    async send(n) {
      await new Promise((r) => setTimeout(r, delayMs));
      log.push(`${name}:${n.id}`);
      return fail.includes(n.id)
        ? { outcome: "error", status: 500, error: "HTTP 500" }
        : { outcome: "delivered", status: 200 };
    },
  });
  const rows = [3, 1, 2].map((id) => notification("raised", "budget", { id, destination: "slack" }))
    .concat([4, 5].map((id) => notification("raised", "budget", { id, destination: "webhook" })));
  const results = await deliver(rows, [fake("slack", [], 5), fake("webhook", [4], 1)]);
  assertEquals(log.filter((l) => l.startsWith("slack")), ["slack:1", "slack:2", "slack:3"]);
  assertEquals(log.indexOf("webhook:4") < log.indexOf("slack:1"), true, "not after slack's");
  assertEquals(
    results.map((r) => `${r.id}:${r.outcome}`).sort(),
    ["1:delivered", "2:delivered", "3:delivered", "4:error", "5:skipped"],
  );
});
