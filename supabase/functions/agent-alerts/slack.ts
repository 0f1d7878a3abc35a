/**
 * Owns the Slack incoming-webhook message: a non-empty `text` (what
 * notifications and clients without blocks show) and Block Kit `blocks`
 * with the state, kind, subject, observed vs threshold and the runbook
 * section. Slack answers 200 `ok`; `no_text` or `invalid_payload` with 400.
 */
import {
  type ClaimedNotification,
  type Destination,
  figure,
  headline,
  runbookFor,
} from "./notification.ts";
import { type Fetch, postJson } from "./http-send.ts";

/** Slack's mrkdwn control characters, escaped as its docs ask. */
function escape(text: string): string {
  return text.replaceAll("&", "&amp;").replaceAll("<", "&lt;").replaceAll(">", "&gt;");
}

export function slackMessage(n: ClaimedNotification, runbookBaseUrl?: string) {
  const a = n.payload;
  const runbook = runbookFor(a.kind, runbookBaseUrl);
  const text = escape(headline(a));
  const field = (label: string, value: string) => ({
    type: "mrkdwn",
    text: `*${label}*\n${escape(value).slice(0, 1900)}`,
  });
  return {
    text,
    blocks: [
      { type: "section", text: { type: "mrkdwn", text: text.slice(0, 2900) } },
      {
        type: "section",
        fields: [
          field("State", a.state),
          field("Kind", a.kind),
          field("Subject", a.subject),
          field("Observed", a.kind === "test" ? "-" : figure(a.kind, a.observed)),
          field("Threshold", a.kind === "test" ? "-" : figure(a.kind, a.threshold)),
          field("Raised at", a.raised_at),
        ],
      },
      {
        type: "context",
        elements: [{
          type: "mrkdwn",
          text: runbook.url
            ? `Runbook: <${runbook.url}|${escape(runbook.section)}>`
            : `Runbook: ${escape(runbook.section)}`,
        }],
      },
    ],
  };
}

export function createSlackDestination(
  options: { url: string; timeoutMs: number; runbookBaseUrl?: string; fetch?: Fetch },
): Destination {
  return {
    name: "slack",
    send: (n) =>
      postJson(
        { url: options.url, body: JSON.stringify(slackMessage(n, options.runbookBaseUrl)) },
        options,
      ),
  };
}
