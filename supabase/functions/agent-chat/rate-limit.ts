/**
 * Owns the one shape of a rate-limit decision, read from the begin-turn
 * result, and the RateLimit headers (IETF draft) that tell the client about it.
 */

import type { RateLimitDecision, RateLimitScope } from "./turn.ts";

/** `windowSeconds` is the default; a decision names its bucket's own window (a policy may set it). */
export function decisionFromDatabase(raw: unknown, windowSeconds: number): RateLimitDecision {
  const r = (raw ?? {}) as Record<string, unknown>;
  return {
    allowed: r.allowed === true,
    scope: (typeof r.scope === "string" ? r.scope : "org") as RateLimitScope,
    limit: Number(r.limit ?? 0),
    remaining: Number(r.remaining ?? 0),
    resetSeconds: Number(r.reset_seconds ?? 0),
    retryAfterSeconds: Number(r.retry_after_seconds ?? 0),
    windowSeconds: Number(r.window_seconds ?? windowSeconds),
  };
}

/** The scope that decided: the refusing one on 429, the tightest otherwise. */
export function rateLimitHeaders(d: RateLimitDecision): Record<string, string> {
  const headers: Record<string, string> = {
    "ratelimit-policy": `"${d.scope}";q=${d.limit};w=${d.windowSeconds}`,
    "ratelimit": `"${d.scope}";r=${d.remaining};t=${d.resetSeconds}`,
    "ratelimit-limit": String(d.limit),
    "ratelimit-remaining": String(d.remaining),
    "ratelimit-reset": String(d.resetSeconds),
  };
  if (!d.allowed) headers["retry-after"] = String(Math.max(1, d.retryAfterSeconds));
  return headers;
}

export const RATE_LIMIT_HEADER_NAMES = [
  "retry-after",
  "ratelimit",
  "ratelimit-policy",
  "ratelimit-limit",
  "ratelimit-remaining",
  "ratelimit-reset",
];
