/**
 * Owns the words of a turn that every step shares: a chat message, token
 * usage, a rate-limit decision, the session a turn belongs to, the begin- and
 * end-turn arguments and results, a stored answer, a usage row, and what a
 * request is known to be about and how it ended. Types only; imports nothing
 * of ours, so any module may import it and no module imports another for a
 * word (scripts/check-imports.ts fails on an import circle).
 */

/** One message of a conversation, as stored and as sent to the model. */
export interface ChatMessage {
  role: "user" | "assistant";
  content: string;
}

/** Tokens of one model call, as the upstream reported them or as estimated. */
export interface TokenUsage {
  prompt_tokens: number;
  completion_tokens: number;
  total_tokens: number;
  cached_prompt_tokens: number;
}

/** The request buckets, a policy's channel: bucket, the token quotas (`tokens`), and replays and 409s (`replay`). */
export type RateLimitScope = "org" | "user" | "ip" | "channel" | "tokens" | "replay";

/** The one shape of a rate-limit decision (rate-limit.ts reads it from the begin-turn result). */
export interface RateLimitDecision {
  allowed: boolean;
  /** The refusing scope when refused; the one with the least left otherwise. */
  scope: RateLimitScope;
  limit: number;
  remaining: number;
  resetSeconds: number;
  retryAfterSeconds: number;
  windowSeconds: number;
}

/** Which conversation a turn belongs to, and whose it is. */
export interface SessionKey {
  sessionId: string;
  orgId: string;
  userId: string;
  channel: string;
}

/** The answer a completed Idempotency-Key stores and a replay sends: the JSON body of the first attempt. */
export interface StoredAnswer {
  session_id: string;
  message: string;
  usage: { prompt_tokens: number; completion_tokens: number; total_tokens: number };
  model: string;
  request_id: string;
}

/** What a usage event carries to settle its attempt's key (ops.idempotency_settle). */
export interface IdempotencySettlement {
  key: string;
  outcome: "complete" | "release";
  response?: StoredAnswer;
  ttl_seconds?: number;
}

/** One row of `public.agent_usage_events`, as the function sends it. */
export interface UsageEvent {
  request_id: string;
  org_id: string | null;
  user_id: string | null;
  session_id: string | null;
  channel: string | null;
  model: string | null;
  prompt_tokens: number | null;
  cached_prompt_tokens: number | null;
  completion_tokens: number | null;
  total_tokens: number | null;
  latency_ms: number;
  success: boolean;
  error_code: string | null;
  error_message: string | null;
  /** Requests this row stands for: 1, or more on an aggregated refusal row. */
  event_count: number;
  metadata: Record<string, unknown>;
  /** The request's arrival (ISO 8601), the partition key; the database uses now() without it. */
  created_at?: string;
  /** Settles the attempt's Idempotency-Key; not a column (idempotency.ts). */
  idempotency?: IdempotencySettlement;
}

/** What a request is known to be about when its row is written. */
export interface RequestFacts {
  requestId: string;
  clientRequestId?: string | undefined;
  started: number;
  /** Wall-clock arrival (ISO 8601): the usage row's created_at, the same on every write of the request. */
  arrivedAt?: string | undefined;
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

/** The models a tenant policy routes its turns to (ops.agent_policies.model, model_fallbacks). */
export interface ModelRoute {
  model: string;
  fallbacks: string[] | undefined;
}

/** One upstream's part in a model call, as `metadata.model_attempts` lists it. */
export interface ModelAttempt {
  model: string;
  /** `model@host` of the base URL: the circuit breaker's key, without path or key. */
  upstream: string;
  /** answered | failed:<HTTP status> | failed:timeout | failed:refused | failed:connection | failed:other | skipped:breaker_open */
  outcome: string;
  /** reported (the upstream's usage) | estimated (no usage, or may have run unseen) | none */
  billed: "reported" | "estimated" | "none";
  /** The breaker transition this attempt caused or ran under: opened, probe, closed. */
  breaker?: "opened" | "probe" | "closed" | undefined;
  /** Tries of this upstream (retries) that timed out or were cut off, metered as estimates. */
  unsettled_tries?: number | undefined;
}

/** How a request ended: what was billed, and the error when it failed. */
export interface Outcome {
  model?: string | undefined;
  usage?: TokenUsage | undefined;
  /** The usage is an estimate (the upstream never reported it, or not for every attempt). */
  estimated?: boolean | undefined;
  /** Model calls made for this turn, when more than one (retries are billed too). */
  attempts?: number | undefined;
  /** Each upstream tried (fallbacks.ts): `metadata.model_attempts` when there is more than one plain answer. */
  modelAttempts?: ModelAttempt[] | undefined;
  /** `code`: an `ErrorCode` of _shared/errors.ts (AgentError's code). */
  error?: { code: string; detail: string } | undefined;
  /** The stored answer of an Idempotency-Key was sent again (no model call; counted like a refusal). */
  replayed?: boolean | undefined;
}

/** The arguments of `public.agent_begin_turn`. */
export interface BeginTurnArgs {
  p_org_id: string;
  p_user_id: string;
  p_client_ip: string | null;
  p_channel: string;
  p_session_id: string | null;
  p_org_limit: number;
  p_user_limit: number;
  p_ip_limit: number;
  p_window_seconds: number;
  p_max_messages: number;
  p_load_history: boolean;
  /** false: the session store knows the session is someone else's (refused in the database's order). */
  p_session_owned: boolean | null;
  /** Idempotency-Key (idempotency.ts): sent only when the request carries one. */
  p_idempotency_key?: string;
  p_request_hash?: string;
  /** The server's request id: names the token reservation its usage row settles. */
  p_request_id: string | null;
  /** The turn's worst case: prompt estimate (history the database reads is added there) + max output tokens. */
  p_reserve_tokens: number;
  /** Prices the reservation against an enforced budget. */
  p_model: string | null;
  /** After this many seconds an unsettled reservation stops counting. */
  p_reserve_seconds: number;
  /** Times the prompt may be billed (1 + retries): the history the database reads counts this often. */
  p_prompt_copies: number;
}

/** The arguments of `public.agent_end_turn` and `public.agent_finish_turn` (the stored turn). */
export interface EndTurnArgs {
  p_session_id: string;
  p_org_id: string;
  p_user_id: string;
  p_channel: string;
  p_user_message: string;
  p_assistant_message: string;
  p_ttl_seconds: number;
  p_max_messages: number;
}

/**
 * The result of `public.agent_begin_turn`. `member`: whether the user is a
 * member of the org, on every outcome (a non-member's usage row must not name
 * the org). Refusals carry the rate-limit decision of the user: slot they
 * consumed.
 */
export type BeginTurnResult =
  & { member?: boolean }
  & (
    | {
      outcome: "ok";
      rate_limit: unknown;
      session_exists: boolean;
      history: ChatMessage[];
      /** Tokens reserved under a quota or an enforced budget; null when none applies. */
      reserved_tokens?: number | null;
      /** The tenant policy's model and comma-separated fallbacks; null: the environment's. */
      model?: string | null;
      model_fallbacks?: string | null;
    }
    | { outcome: "rate_limit"; rate_limit: unknown }
    | {
      outcome: "assistant_disabled";
      message: string | null;
      disabled_scope: "global" | "channel" | "org" | "org_channel";
    }
    | {
      outcome: "budget_exceeded";
      budget: {
        scope: "org" | "global";
        budget_usd: number;
        spent_usd?: number;
        reserved_usd?: number;
        /** Refused because the model has no price, so no spend could be enforced. */
        unpriced_model?: string;
      };
    }
    | {
      outcome: "opt_out";
      opt_out_scope: "org" | "user";
      opt_out_channel: string | null;
      rate_limit?: unknown;
    }
    | { outcome: "forbidden"; rate_limit?: unknown }
    | { outcome: "session_not_found"; rate_limit?: unknown }
    | { outcome: "replay"; response: StoredAnswer }
    | { outcome: "idempotency_mismatch" }
    | {
      outcome: "request_in_progress";
      retry_after_seconds?: number;
      request_id?: string;
    }
  );
