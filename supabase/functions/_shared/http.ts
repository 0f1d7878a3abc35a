/** Response helpers: JSON bodies, the error contract, CORS and request ids. */
import { AgentError } from "./errors.ts";
import type { RateLimitDecision } from "./rate-limit.ts";

const REQUEST_ID = /^[A-Za-z0-9._:-]{8,128}$/;

/** Honour a sane `x-request-id` from the caller, else make one. */
export function requestIdFrom(headers: Headers): string {
  const given = headers.get("x-request-id");
  return given && REQUEST_ID.test(given) ? given : crypto.randomUUID();
}

export function corsHeaders(allowedOrigins: string, origin: string | null): Record<string, string> {
  const allowed = allowedOrigins.split(",").map((s) => s.trim());
  const value = allowed.includes("*")
    ? "*"
    : origin && allowed.includes(origin)
    ? origin
    : allowed[0] ?? "";
  return {
    "access-control-allow-origin": value,
    "access-control-allow-headers":
      "authorization, x-client-info, apikey, content-type, x-request-id",
    "access-control-allow-methods": "POST, OPTIONS",
    "access-control-expose-headers":
      "x-request-id, retry-after, ratelimit, ratelimit-policy, ratelimit-limit, ratelimit-remaining, ratelimit-reset",
    "access-control-max-age": "86400",
    ...(value === "*" ? {} : { vary: "Origin" }),
  };
}

/**
 * RateLimit headers (IETF draft "RateLimit header fields for HTTP"), naming
 * the scope that decided: the refusing one on 429, the tightest otherwise.
 */
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

export function jsonResponse(
  status: number,
  body: unknown,
  headers: Record<string, string> = {},
): Response {
  return new Response(JSON.stringify(body), {
    status,
    headers: { "content-type": "application/json; charset=utf-8", ...headers },
  });
}

export function errorResponse(
  error: AgentError,
  requestId: string,
  headers: Record<string, string> = {},
): Response {
  return jsonResponse(
    error.status,
    { error: { code: error.code, message: error.message, request_id: requestId } },
    { ...headers, ...(error.options.headers ?? {}), "x-request-id": requestId },
  );
}
