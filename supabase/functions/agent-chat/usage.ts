/**
 * Owns the usage row: what one request is recorded as (`usageEvent`) and how
 * it is written (`createUsageLogger`): one insert, handed to
 * `EdgeRuntime.waitUntil` when the runtime has it, awaited otherwise. Every
 * string is made storable first, so no client input can make the insert
 * fail; a failed insert never fails the request: it becomes a log line and
 * a durable retry (recovery.ts).
 */
import { describe, type ErrorCode } from "../_shared/errors.ts";
import type { Logger } from "../_shared/log.ts";
import { storable } from "../_shared/text.ts";
import type { TurnDatabase, UsageEvent } from "./database.ts";
import type { TokenUsage } from "./model.ts";
import type { RateLimitDecision } from "./rate-limit.ts";
import type { Recovery } from "./recovery.ts";

/** Keeps the isolate alive until `promise` settles (EdgeRuntime.waitUntil). */
export type ExtendLifetime = (promise: Promise<unknown>) => void;

export function edgeRuntimeLifetime(): ExtendLifetime | undefined {
  const runtime = (globalThis as { EdgeRuntime?: { waitUntil?: (p: Promise<unknown>) => void } })
    .EdgeRuntime;
  return typeof runtime?.waitUntil === "function" ? (p) => runtime.waitUntil!(p) : undefined;
}

/** What a request is known to be about when its row is written. */
export interface RequestFacts {
  requestId: string;
  clientRequestId?: string | undefined;
  started: number;
  orgId?: string | null | undefined;
  /** The org a refused non-member named: kept out of `org_id` so it cannot poison that org's reports. */
  requestedOrgId?: string | undefined;
  userId?: string | undefined;
  sessionId?: string | undefined;
  channel?: string | undefined;
  clientIp?: string | undefined;
  stream?: boolean | undefined;
  rateLimit?: RateLimitDecision | undefined;
  /** The bucket scope that refused the request, when a limit did. */
  refusedScope?: string | undefined;
  clientMetadata?: Record<string, unknown> | undefined;
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

export interface Outcome {
  model?: string | undefined;
  usage?: TokenUsage | undefined;
  /** The usage is an estimate (the upstream never reported it, or not for every attempt). */
  estimated?: boolean | undefined;
  /** Model calls made for this turn, when more than one (retries are billed too). */
  attempts?: number | undefined;
  error?: { code: ErrorCode; detail: string } | undefined;
  /** The stored answer of an Idempotency-Key was sent again (no model call; counted like a refusal). */
  replayed?: boolean | undefined;
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
    ...(outcome.attempts && outcome.attempts > 1 ? { model_attempts: outcome.attempts } : {}),
    ...(facts.clientRequestId ? { client_request_id: facts.clientRequestId } : {}),
    ...(facts.requestedOrgId ? { requested_org_id: facts.requestedOrgId } : {}),
    ...(facts.clientMetadata ? { client: facts.clientMetadata } : {}),
  };
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
