/**
 * Owns the Standard Webhooks delivery: body `{type, timestamp, data}` with
 * type alert.raised, alert.warning, alert.resolved (alert.test for a test),
 * signed with the `standardwebhooks` package: webhook-id (the outbox row's,
 * the same on every retry), webhook-timestamp (this attempt's) and
 * webhook-signature (v1, HMAC-SHA256 of `id.timestamp.body`).
 */
import { Webhook } from "standardwebhooks";
import { type ClaimedNotification, type Destination, runbookFor } from "./notification.ts";
import { type Fetch, postJson } from "./http-send.ts";

export function webhookBody(n: ClaimedNotification, runbookBaseUrl?: string) {
  const a = n.payload;
  const runbook = runbookFor(a.kind, runbookBaseUrl);
  return {
    type: `alert.${n.state}`,
    timestamp: n.created_at,
    data: {
      alert_id: a.alert_id ?? null,
      state: a.state,
      kind: a.kind,
      subject: a.subject,
      org_id: a.org_id ?? null,
      observed: a.observed,
      threshold: a.threshold,
      details: a.details,
      raised_at: a.raised_at,
      resolved_at: a.resolved_at ?? null,
      dedup_key: n.dedup_key,
      runbook: runbook.url ?? runbook.section,
    },
  };
}

export function createWebhookDestination(
  options: {
    url: string;
    secret: string;
    timeoutMs: number;
    runbookBaseUrl?: string;
    fetch?: Fetch;
    now?: () => Date;
  },
): Destination {
  const signer = new Webhook(options.secret);
  return {
    name: "webhook",
    send(n) {
      const body = JSON.stringify(webhookBody(n, options.runbookBaseUrl));
      const at = options.now?.() ?? new Date();
      const headers = {
        "webhook-id": n.message_id,
        "webhook-timestamp": String(Math.floor(at.getTime() / 1000)),
        "webhook-signature": signer.sign(n.message_id, at, body),
      };
      return postJson({ url: options.url, body, headers }, options);
    },
  };
}
