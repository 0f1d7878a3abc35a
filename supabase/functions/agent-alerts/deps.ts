/**
 * Owns building agent-alerts' dependencies from its configuration: the Data
 * API client, one sender per configured destination, and the cycle.
 */
import { createClient } from "@supabase/supabase-js";
import { consoleLogger, type Logger } from "../_shared/log.ts";
import type { AlertsConfig } from "./config.ts";
import { runCycle } from "./cycle.ts";
import { type AlertsDatabase, createRpcAlertsDatabase } from "./database.ts";
import type { AlertsDeps } from "./handler.ts";
import type { Destination } from "./notification.ts";
import type { Fetch } from "./http-send.ts";
import { createPagerDutyDestination } from "./pagerduty.ts";
import { createSlackDestination } from "./slack.ts";
import { createWebhookDestination } from "./webhook.ts";

export function buildDestinations(config: AlertsConfig, fetch?: Fetch): Destination[] {
  const common = {
    timeoutMs: config.timeoutMs,
    ...(config.runbookBaseUrl ? { runbookBaseUrl: config.runbookBaseUrl } : {}),
    ...(fetch ? { fetch } : {}),
  };
  const list: Destination[] = [];
  if (config.slack) list.push(createSlackDestination({ ...common, url: config.slack.url }));
  if (config.pagerduty) {
    list.push(
      createPagerDutyDestination({ ...common, ...config.pagerduty, source: config.source }),
    );
  }
  if (config.webhook) list.push(createWebhookDestination({ ...common, ...config.webhook }));
  return list;
}

export function createAlertsDatabase(config: AlertsConfig): AlertsDatabase {
  const client = createClient(config.supabaseUrl, config.serviceKeys[0]!, {
    auth: { persistSession: false, autoRefreshToken: false, detectSessionInUrl: false },
    global: { headers: { "x-client-info": "agent-alerts" } },
  });
  return createRpcAlertsDatabase(client);
}

export function buildAlertsDependencies(
  config: AlertsConfig,
  overrides: { log?: Logger; db?: AlertsDatabase; now?: () => Date } = {},
): AlertsDeps {
  const db = overrides.db ?? createAlertsDatabase(config);
  const destinations = buildDestinations(config);
  const settings = {
    retryBaseSeconds: config.retryBaseSeconds,
    maxAttempts: config.maxAttempts,
    claimLimit: 20,
    // Longer than a cycle can take: 20 sends in a row, each bounded by the timeout.
    leaseSeconds: Math.ceil((20 * config.timeoutMs) / 1000) + 60,
  };
  return {
    serviceKeys: config.serviceKeys,
    log: overrides.log ?? consoleLogger,
    runCycle: () =>
      runCycle({ db, destinations, ...(overrides.now ? { now: overrides.now } : {}) }, settings),
  };
}
