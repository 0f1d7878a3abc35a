/**
 * Owns what a request leaves in the function's log: one structured JSON line
 * per request (for Supabase's Logs Explorer), with the internal detail of
 * server-side failures.
 */
import type { Logger } from "../_shared/log.ts";
import type { Outcome, RequestFacts } from "./turn.ts";

export function requestLogLine(
  settings: { sessionStore: string; transport: string },
  facts: RequestFacts,
  status: number,
  outcome: Outcome,
  now: number,
): Parameters<Logger> {
  // Errors are the failures of the service; a switched-off assistant is an operator's decision.
  const failed = status >= 500 && outcome.error?.code !== "assistant_disabled";
  const level = failed ? "error" : status >= 400 && status !== 499 ? "warn" : "info";
  return [level, "request", {
    request_id: facts.requestId,
    status,
    code: outcome.error?.code ?? "ok",
    latency_ms: Math.round(now - facts.started),
    store: settings.sessionStore,
    transport: settings.transport,
    stream: facts.stream ?? false,
    org_id: facts.orgId ?? null,
    user_id: facts.userId ?? null,
    client_ip: facts.clientIp ?? null,
    ...(facts.clientRequestId ? { client_request_id: facts.clientRequestId } : {}),
    ...(outcome.usage ? { total_tokens: outcome.usage.total_tokens } : {}),
    ...(outcome.replayed ? { idempotent_replayed: true } : {}),
    ...(status >= 500 && outcome.error ? { detail: outcome.error.detail } : {}),
  }];
}
