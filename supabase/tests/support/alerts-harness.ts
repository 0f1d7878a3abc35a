/**
 * What a test of agent-alerts needs: the three receivers
 * (../stand-ins/alert-receivers.ts), the local platform in front of the test
 * run's database (the function reaches Postgres through the PostgREST
 * stand-in, as hosted), and the function's handler built as index.ts builds
 * it but on a clock the test moves (each test its own far-future month, so
 * no other test's usage rows fall in its windows). Alert state left by an
 * earlier test (open alerts, outbox rows, destinations, mutes) is cleared
 * first.
 */
import postgres from "postgres";
import { startPlatform } from "./local-stack.ts";
import { testUrls } from "./function-harness.ts";
import {
  type Receiver,
  startPagerDutyReceiver,
  startSlackReceiver,
  startWebhookReceiver,
} from "../stand-ins/alert-receivers.ts";
import { loadAlertsConfig } from "../../functions/agent-alerts/config.ts";
import { buildAlertsDependencies } from "../../functions/agent-alerts/deps.ts";
import { createAlertsHandler } from "../../functions/agent-alerts/handler.ts";

export interface AlertsHarness {
  slack: Receiver;
  pagerduty: Receiver;
  webhook: Receiver;
  webhookSecret: string;
  sql: postgres.Sql;
  secretKey: string;
  /** The function's clock (moved with `at`). */
  now(): Date;
  at(when: Date | string): void;
  advance(seconds: number): void;
  /** POST to the handler with the service key: one cycle. */
  cycle(): Promise<Response>;
  /** `n` served requests of `org` at the clock's time minus `agoSeconds`. */
  usage(org: string, n: number, success: boolean, agoSeconds?: number): Promise<void>;
  stop(): Promise<void>;
}

export function newWebhookSecret(): string {
  return `whsec_${btoa(String.fromCharCode(...crypto.getRandomValues(new Uint8Array(32))))}`;
}

/**
 * The scheduled check (pg_cron, every minute at the real now()) would resolve
 * the far-future alerts of a test between its cycles; it is paused for the
 * test and scheduled again after it.
 */
export async function pauseScheduledCheck(sql: postgres.Sql) {
  await sql`select cron.unschedule(j.jobid) from cron.job j
    where j.jobname = 'agent-chat-check-alerts'`.catch(() => {});
}

export async function resumeScheduledCheck(sql: postgres.Sql) {
  await sql`select ops.schedule_alert_delivery()`.catch(() => {});
}

export async function resetAlerts(sql: postgres.Sql) {
  await sql`delete from ops.alert_outbox`;
  await sql`update ops.alert_events set resolved_at = now() where resolved_at is null`;
  await sql`delete from ops.alert_destinations`;
  await sql`delete from ops.alert_mutes`;
}

export async function startAlertsHarness(options: {
  start: string;
  /** Function settings (AI_AGENT_ALERT_*) over the receivers' URLs. */
  env?: Record<string, string>;
}): Promise<AlertsHarness> {
  const { databaseUrl } = testUrls();
  const sql = postgres(databaseUrl, { max: 4, onnotice: () => {} });
  await pauseScheduledCheck(sql);
  await resetAlerts(sql);
  const slack = startSlackReceiver();
  const pagerduty = startPagerDutyReceiver();
  const webhookSecret = newWebhookSecret();
  const webhook = startWebhookReceiver(webhookSecret);
  const platform = await startPlatform({ databaseUrl, env: { OPENAI_API_KEY: "sk-test" } });
  let clock = new Date(options.start);
  const config = loadAlertsConfig({
    SUPABASE_URL: platform.gateway.url,
    SUPABASE_SERVICE_ROLE_KEY: platform.secretKey,
    AI_AGENT_ALERT_SLACK_WEBHOOK_URL: slack.url,
    AI_AGENT_ALERT_PAGERDUTY_ROUTING_KEY: "R0UT1NGKEY0000000000000000000000",
    AI_AGENT_ALERT_PAGERDUTY_URL: pagerduty.url,
    AI_AGENT_ALERT_WEBHOOK_URL: webhook.url,
    AI_AGENT_ALERT_WEBHOOK_SECRET: webhookSecret,
    AI_AGENT_ALERT_TIMEOUT_MS: "500",
    ...options.env,
  });
  const handler = createAlertsHandler(
    buildAlertsDependencies(config, {
      log: (l, e, f) => l === "error" && console.error(e, f),
      now: () => clock,
    }),
  );
  return {
    slack,
    pagerduty,
    webhook,
    webhookSecret,
    sql,
    secretKey: platform.secretKey,
    now: () => clock,
    at(when) {
      clock = new Date(when);
    },
    advance(seconds) {
      clock = new Date(clock.getTime() + seconds * 1000);
    },
    cycle: () =>
      handler(
        new Request("http://localhost/functions/v1/agent-alerts", {
          method: "POST",
          headers: { authorization: `Bearer ${platform.secretKey}` },
        }),
      ),
    async usage(org, n, success, agoSeconds = 60) {
      const at = new Date(clock.getTime() - agoSeconds * 1000);
      await sql`insert into public.agent_usage_events
        (request_id, org_id, success, error_code, latency_ms, created_at)
        select ${crypto.randomUUID()} || '-' || i, ${org}::uuid, ${success},
               ${success ? null : "openai_error"}, 120, ${at}
        from generate_series(1, ${n}) i`;
    },
    async stop() {
      await resetAlerts(sql);
      await resumeScheduledCheck(sql);
      await platform.stop();
      await Promise.all([slack.stop(), pagerduty.stop(), webhook.stop()]);
      await sql.end({ timeout: 1 });
    },
  };
}
