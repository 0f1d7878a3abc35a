/**
 * The words every step of agent-alerts shares: a claimed notification (one
 * outbox row), the outcome of one send, and what people read about an alert
 * (its headline, its figures, the runbook section to follow). Imports
 * nothing of ours.
 */

export type DestinationName = "slack" | "pagerduty" | "webhook";
export type NotificationState = "raised" | "warning" | "resolved" | "test";

/** The alert as it was when its notification was queued (ops.alert_enqueue). */
export interface AlertSnapshot {
  alert_id?: number | null;
  state: NotificationState;
  kind: string;
  subject: string;
  org_id?: string | null;
  observed: number;
  threshold: number;
  details: Record<string, unknown>;
  raised_at: string;
  resolved_at?: string | null;
}

/** One claimed outbox row (public.agent_alerts_begin_cycle). */
export interface ClaimedNotification {
  id: number;
  claim_token: string;
  state: NotificationState;
  destination: DestinationName;
  /** Standard Webhooks webhook-id: the row's, the same on every retry. */
  message_id: string;
  /** PagerDuty dedup_key: the alert's, shared by its trigger and resolve. */
  dedup_key: string;
  payload: AlertSnapshot;
  attempts: number;
  created_at: string;
}

export type SendOutcome =
  | { outcome: "delivered"; status: number }
  | { outcome: "error"; status?: number; error: string };

export interface DeliveryResult {
  id: number;
  claim_token: string;
  outcome: "delivered" | "error" | "skipped";
  status?: number;
  error?: string;
}

/** Sends one notification to one destination; never throws. */
export interface Destination {
  name: DestinationName;
  send(notification: ClaimedNotification): Promise<SendOutcome>;
}

const RUNBOOK_SECTIONS: Record<string, string> = {
  success_rate: "Alert: success rate",
  budget: "Alert: budget",
  budget_warning: "Alert: budget warning",
  latency_p95: "Alert: p95 latency",
  delivery_failed: "Alert: delivery failed",
  test: "Alerts: test a destination",
};

/** The runbook section (docs/operations.md) that says what to do, with its link when a base URL is set. */
export function runbookFor(kind: string, baseUrl?: string): { section: string; url?: string } {
  const section = RUNBOOK_SECTIONS[kind] ?? "Alerts";
  if (!baseUrl) return { section: `docs/operations.md, "${section}"` };
  const anchor = section.toLowerCase().replace(/[^a-z0-9 -]/g, "").replace(/ /g, "-");
  return { section: `docs/operations.md, "${section}"`, url: `${baseUrl}#${anchor}` };
}

/** A figure as operators read it: a rate in %, spend in USD, latency in ms. */
export function figure(kind: string, value: number): string {
  if (kind === "success_rate") return `${(value * 100).toFixed(2)}%`;
  if (kind === "budget" || kind === "budget_warning") return `$${value.toFixed(2)}`;
  if (kind === "latency_p95") return `${Math.round(value)} ms`;
  return String(value);
}

const WHAT: Record<string, string> = {
  success_rate: "success rate below threshold (15 min)",
  budget: "month-to-date spend over budget",
  budget_warning: "month-to-date spend nearing budget",
  latency_p95: "p95 latency over threshold (15 min)",
  delivery_failed: "alert notifications failing",
  test: "test notification",
};

/** One line: state, kind, subject, observed vs threshold. */
export function headline(a: AlertSnapshot): string {
  const state = a.state.toUpperCase();
  const what = WHAT[a.kind] ?? a.kind;
  const figures = a.kind === "test"
    ? "nothing is wrong"
    : `observed ${figure(a.kind, a.observed)} vs threshold ${figure(a.kind, a.threshold)}`;
  return `[${state}] agent-chat ${a.kind} (${what}) for ${a.subject}: ${figures}`;
}
