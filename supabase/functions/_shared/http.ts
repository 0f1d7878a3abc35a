/**
 * Owns the HTTP surface every function shares: request ids, CORS (the
 * Supabase SDK's own header list), JSON bodies and the error body shape.
 */
import { corsHeaders as supabaseCors } from "@supabase/supabase-js/cors";
import type { AgentError } from "./errors.ts";

const CLIENT_REQUEST_ID = /^[A-Za-z0-9._:-]{8,128}$/;

/** The server's request id, always its own, plus a sane client `x-request-id` to echo back. */
export function requestIds(headers: Headers): { requestId: string; clientRequestId?: string } {
  const given = headers.get("x-request-id");
  const requestId = crypto.randomUUID();
  return given && CLIENT_REQUEST_ID.test(given)
    ? { requestId, clientRequestId: given }
    : { requestId };
}

export interface CorsOptions {
  /** Comma-separated origins, or "*". */
  allowedOrigins: string;
  /** Request headers this function reads beyond the SDK's. */
  extraAllowHeaders?: string[];
  /** Response headers the browser may read. */
  exposeHeaders?: string[];
  methods?: string;
}

/** A CORS header builder: the SDK's allow-list, extended only where the function needs more. */
export function createCors(options: CorsOptions) {
  const allowed = options.allowedOrigins.split(",").map((s) => s.trim()).filter(Boolean);
  const base: Record<string, string> = {
    "access-control-allow-headers": [
      supabaseCors["Access-Control-Allow-Headers"],
      ...(options.extraAllowHeaders ?? []),
    ].join(", "),
    "access-control-allow-methods": options.methods ?? "POST, OPTIONS",
    "access-control-expose-headers": (options.exposeHeaders ?? []).join(", "),
    "access-control-max-age": "86400",
  };
  return function corsHeaders(origin: string | null): Record<string, string> {
    if (allowed.includes("*")) return { ...base, "access-control-allow-origin": "*" };
    const value = origin && allowed.includes(origin) ? origin : allowed[0] ?? "";
    return { ...base, "access-control-allow-origin": value, vary: "Origin" };
  };
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

/** `{ "error": { code, message, request_id } }` with the error's own headers. */
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
