/**
 * Owns agent-alerts' configuration: one zod schema over the environment,
 * defaults in it, one `ConfigError` listing every problem. Destinations are
 * any subset of Slack, PagerDuty and a Standard Webhooks endpoint; none
 * means alerts are only recorded.
 */
import { z } from "zod";
import {
  ConfigError,
  int,
  optionalText,
  problemsOf,
  secureUrl,
  serviceKeysFrom,
  url,
} from "../_shared/env.ts";
import { PAGERDUTY_URL } from "./pagerduty.ts";

export { ConfigError };

const envSchema = z.object({
  SUPABASE_URL: url(),
  SUPABASE_SERVICE_ROLE_KEY: optionalText(),
  SUPABASE_SECRET_KEYS: optionalText(),
  AI_AGENT_ALERT_SLACK_WEBHOOK_URL: secureUrl(),
  AI_AGENT_ALERT_PAGERDUTY_ROUTING_KEY: optionalText(),
  AI_AGENT_ALERT_PAGERDUTY_URL: secureUrl(),
  AI_AGENT_ALERT_WEBHOOK_URL: secureUrl(),
  AI_AGENT_ALERT_WEBHOOK_SECRET: optionalText(),
  AI_AGENT_ALERT_RETRY_BASE_SECONDS: int(1, 86_400, 30),
  AI_AGENT_ALERT_MAX_ATTEMPTS: int(1, 100, 8),
  AI_AGENT_ALERT_TIMEOUT_MS: int(100, 60_000, 5000),
  AI_AGENT_ALERT_RUNBOOK_URL: secureUrl(),
  AI_AGENT_ALERT_SOURCE: optionalText(),
});

type Env = z.output<typeof envSchema>;

function toConfig(e: Env, problems: string[]) {
  return {
    supabaseUrl: e.SUPABASE_URL ?? "",
    serviceKeys: serviceKeysFrom(e.SUPABASE_SERVICE_ROLE_KEY, e.SUPABASE_SECRET_KEYS, problems),
    slack: e.AI_AGENT_ALERT_SLACK_WEBHOOK_URL
      ? { url: e.AI_AGENT_ALERT_SLACK_WEBHOOK_URL }
      : undefined,
    pagerduty: e.AI_AGENT_ALERT_PAGERDUTY_ROUTING_KEY
      ? {
        routingKey: e.AI_AGENT_ALERT_PAGERDUTY_ROUTING_KEY,
        url: e.AI_AGENT_ALERT_PAGERDUTY_URL ?? PAGERDUTY_URL,
      }
      : undefined,
    webhook: e.AI_AGENT_ALERT_WEBHOOK_URL
      ? { url: e.AI_AGENT_ALERT_WEBHOOK_URL, secret: e.AI_AGENT_ALERT_WEBHOOK_SECRET ?? "" }
      : undefined,
    retryBaseSeconds: e.AI_AGENT_ALERT_RETRY_BASE_SECONDS,
    maxAttempts: e.AI_AGENT_ALERT_MAX_ATTEMPTS,
    timeoutMs: e.AI_AGENT_ALERT_TIMEOUT_MS,
    runbookBaseUrl: e.AI_AGENT_ALERT_RUNBOOK_URL,
    source: e.AI_AGENT_ALERT_SOURCE ??
      (e.SUPABASE_URL ? new URL(e.SUPABASE_URL).hostname : "agent-chat"),
  };
}

export type AlertsConfig = ReturnType<typeof toConfig>;

/** `whsec_` and base64 of 24 to 64 bytes, as the Standard Webhooks specification has it. */
function isWebhookSecret(secret: string): boolean {
  if (!secret.startsWith("whsec_")) return false;
  try {
    const bytes = atob(secret.slice("whsec_".length)).length;
    return bytes >= 24 && bytes <= 64;
  } catch {
    return false;
  }
}

export function loadAlertsConfig(env: Record<string, string | undefined>): AlertsConfig {
  const parsed = envSchema.safeParse(env);
  if (!parsed.success) throw new ConfigError(problemsOf(parsed.error));
  const e = parsed.data;
  const problems: string[] = [];
  const config = toConfig(e, problems);
  if (!e.SUPABASE_URL) problems.push("SUPABASE_URL: required (the Data API the function calls)");
  if (config.serviceKeys.length === 0) {
    problems.push("SUPABASE_SERVICE_ROLE_KEY or SUPABASE_SECRET_KEYS: required");
  }
  if (config.webhook && !isWebhookSecret(config.webhook.secret)) {
    problems.push(
      "AI_AGENT_ALERT_WEBHOOK_SECRET: required with AI_AGENT_ALERT_WEBHOOK_URL, whsec_ and base64 of 24 to 64 bytes",
    );
  }
  if (!config.pagerduty && e.AI_AGENT_ALERT_PAGERDUTY_URL) {
    problems.push("AI_AGENT_ALERT_PAGERDUTY_URL: set without AI_AGENT_ALERT_PAGERDUTY_ROUTING_KEY");
  }
  if (!config.webhook && e.AI_AGENT_ALERT_WEBHOOK_SECRET) {
    problems.push("AI_AGENT_ALERT_WEBHOOK_SECRET: set without AI_AGENT_ALERT_WEBHOOK_URL");
  }
  if (problems.length > 0) throw new ConfigError(problems);
  return config;
}
