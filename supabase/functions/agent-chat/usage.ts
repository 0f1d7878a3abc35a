/**
 * Owns the usage row: what one request is recorded as (`usageEvent`) and how
 * it is written (`createUsageLogger`): one insert, handed to
 * `EdgeRuntime.waitUntil` when the runtime has it, awaited otherwise. Every
 * string is made storable first, so no client input can make the insert
 * fail; a failed insert never fails the request: it becomes a log line and
 * a durable retry (recovery.ts).
 */
import { describe } from "../_shared/errors.ts";
import type { Logger } from "../_shared/log.ts";
import { storable } from "../_shared/text.ts";
import type { TurnDatabase } from "./database.ts";
import type { Recovery } from "./recovery.ts";
import type { ModelAttempt, Outcome, RequestFacts, UsageEvent } from "./turn.ts";

/** Keeps the isolate alive until `promise` settles (EdgeRuntime.waitUntil). */
export type ExtendLifetime = (promise: Promise<unknown>) => void;

export function edgeRuntimeLifetime(): ExtendLifetime | undefined {
  const runtime = (globalThis as { EdgeRuntime?: { waitUntil?: (p: Promise<unknown>) => void } })
    .EdgeRuntime;
  return typeof runtime?.waitUntil === "function" ? (p) => runtime.waitUntil!(p) : undefined;
}

/** The facts of a request once its body is read: who, which org, session and channel. */
export function turnFacts(
  facts: RequestFacts,
  body: {
    orgId: string;
    channel: string;
    stream: boolean;
    metadata?: Record<string, unknown> | undefined;
  },
  who: { userId: string; clientIp: string | undefined },
  sessionId: string,
): RequestFacts {
  return {
    ...facts,
    ...who,
    orgId: body.orgId,
    sessionId,
    channel: body.channel,
    stream: body.stream,
    clientMetadata: body.metadata,
  };
}

export interface UsageSettings {
  model: string;
  sessionStore: string;
}

export function usageEvent(
  settings: UsageSettings,
  facts: RequestFacts,
  outcome: Outcome,
  latencyMs: number,
): UsageEvent {
  const u = outcome.usage;
  return {
    request_id: facts.requestId,
    org_id: facts.orgId ?? null,
    user_id: facts.userId ?? null,
    session_id: facts.sessionId ?? null,
    channel: facts.channel ?? null,
    model: outcome.model ?? settings.model,
    prompt_tokens: u?.prompt_tokens ?? null,
    cached_prompt_tokens: u?.cached_prompt_tokens ?? null,
    completion_tokens: u?.completion_tokens ?? null,
    total_tokens: u?.total_tokens ?? null,
    latency_ms: Math.max(0, Math.round(latencyMs)),
    success: !outcome.error,
    error_code: outcome.error?.code ?? null,
    error_message: outcome.error?.detail ?? null,
    event_count: 1,
    metadata: metadataOf(settings, facts, outcome),
    // The partition key and half of the metered-once key (request_id, created_at).
    ...(facts.arrivedAt ? { created_at: facts.arrivedAt } : {}),
  };
}

function metadataOf(settings: UsageSettings, facts: RequestFacts, outcome: Outcome) {
  const rl = facts.rateLimit;
  const scope = facts.refusedScope ?? rl?.scope;
  return {
    store: settings.sessionStore,
    stream: facts.stream ?? false,
    ...(facts.clientIp ? { client_ip: facts.clientIp } : {}),
    ...(scope ? { rate_limit: { scope, remaining: rl?.remaining ?? 0 } } : {}),
    // The model asked for, when the upstream names another: an unpriced name is priced as this one.
    ...(outcome.model && outcome.model !== settings.model
      ? { requested_model: settings.model }
      : {}),
    ...(outcome.estimated ? { tokens_estimated: true } : {}),
    ...(outcome.replayed ? { replayed: true } : {}),
    ...(notable(outcome.modelAttempts) ? { model_attempts: outcome.modelAttempts } : {}),
    ...(facts.clientRequestId ? { client_request_id: facts.clientRequestId } : {}),
    ...(facts.requestedOrgId ? { requested_org_id: facts.requestedOrgId } : {}),
    ...(facts.clientMetadata ? { client: facts.clientMetadata } : {}),
  };
}

/** Attempts worth a row's bytes: a fallback, a skip, a retry, a breaker transition. */
function notable(attempts: ModelAttempt[] | undefined): boolean {
  if (!attempts || attempts.length === 0) return false;
  const [only] = attempts;
  return attempts.length > 1 || only!.outcome !== "answered" || !!only!.breaker ||
    !!only!.unsettled_tries;
}

export interface UsageLogger {
  readonly enabled: boolean;
  record(event: UsageEvent): Promise<void>;
}

/**
 * Writes a usage event: its row (agent_log_usage), or with the log off its
 * settlement alone (agent_settle_usage). A write the database did not take
 * (or whose outcome is unknown) is logged and handed to the durable retry:
 * the row lands once the database is back, once (unique request_id).
 */
export function createUsageLogger(options: {
  enabled: boolean;
  db: Pick<TurnDatabase, "logUsage" | "settleUsage">;
  log: Logger;
  extendLifetime: ExtendLifetime | undefined;
  recovery?: Pick<Recovery, "retry"> | undefined;
}): UsageLogger {
  return {
    enabled: options.enabled,
    async record(event) {
      // With the log off the event is still settled, without a row: the
      // reservation, the token and spend counters, the Idempotency-Key.
      const row = storable(event);
      const write = () => options.enabled ? options.db.logUsage(row) : options.db.settleUsage(row);
      const insert = write().catch((error) => {
        options.log("error", "usage_log_failed", {
          request_id: event.request_id,
          error_code: event.error_code,
          detail: describe(error),
          retried: options.recovery !== undefined,
        });
        options.recovery?.retry({ name: "usage row", requestId: event.request_id, attempt: write });
      });
      if (options.extendLifetime) options.extendLifetime(insert);
      else await insert;
    },
  };
}
