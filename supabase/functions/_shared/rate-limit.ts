/** One shape for a rate-limit decision, read from the begin-turn result. */

export type RateLimitScope = "org" | "user" | "ip";

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

export function decisionFromDatabase(raw: unknown, windowSeconds: number): RateLimitDecision {
  const r = (raw ?? {}) as Record<string, unknown>;
  return {
    allowed: r.allowed === true,
    scope: (typeof r.scope === "string" ? r.scope : "org") as RateLimitScope,
    limit: Number(r.limit ?? 0),
    remaining: Number(r.remaining ?? 0),
    resetSeconds: Number(r.reset_seconds ?? 0),
    retryAfterSeconds: Number(r.retry_after_seconds ?? 0),
    windowSeconds,
  };
}
