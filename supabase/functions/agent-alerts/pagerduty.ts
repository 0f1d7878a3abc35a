/**
 * Owns the PagerDuty Events API v2 event: `trigger` (raised, warning, test)
 * with routing_key, the alert's dedup_key and a payload of summary (at most
 * 1024 characters), source, severity (critical, error, warning, info) and
 * custom_details; `resolve` with the same dedup_key. PagerDuty answers 202
 * `{status: "success", dedup_key}`; 400 for an invalid event, 429 when
 * throttled (both retried by the outbox).
 */
import {
  type ClaimedNotification,
  type Destination,
  headline,
  runbookFor,
} from "./notification.ts";
import { type Fetch, postJson } from "./http-send.ts";

export const PAGERDUTY_URL = "https://events.pagerduty.com/v2/enqueue";

const SEVERITY: Record<string, "critical" | "error" | "warning" | "info"> = {
  success_rate: "critical",
  budget: "error",
  delivery_failed: "error",
  latency_p95: "warning",
  budget_warning: "warning",
};

export function severityOf(n: ClaimedNotification): "critical" | "error" | "warning" | "info" {
  if (n.state === "test") return "info";
  if (n.state === "warning") return "warning";
  return SEVERITY[n.payload.kind] ?? "error";
}

export function pagerDutyEvent(
  n: ClaimedNotification,
  options: { routingKey: string; source: string; runbookBaseUrl?: string },
) {
  const base = { routing_key: options.routingKey, dedup_key: n.dedup_key };
  if (n.state === "resolved") return { ...base, event_action: "resolve" };
  const a = n.payload;
  const runbook = runbookFor(a.kind, options.runbookBaseUrl);
  return {
    ...base,
    event_action: "trigger",
    payload: {
      summary: headline(a).slice(0, 1024),
      source: options.source,
      severity: severityOf(n),
      timestamp: a.raised_at,
      component: "agent-chat",
      group: a.subject,
      class: a.kind,
      custom_details: {
        state: a.state,
        kind: a.kind,
        subject: a.subject,
        org_id: a.org_id ?? null,
        observed: a.observed,
        threshold: a.threshold,
        details: a.details,
        runbook: runbook.section,
      },
    },
    client: "agent-chat agent-alerts",
    ...(runbook.url ? { links: [{ href: runbook.url, text: runbook.section }] } : {}),
  };
}

export function createPagerDutyDestination(
  options: {
    url: string;
    routingKey: string;
    source: string;
    timeoutMs: number;
    runbookBaseUrl?: string;
    fetch?: Fetch;
  },
): Destination {
  return {
    name: "pagerduty",
    send: (n) =>
      postJson({ url: options.url, body: JSON.stringify(pagerDutyEvent(n, options)) }, options),
  };
}
