/** The one error type of the request path, mapped to the documented statuses. */

export type ErrorCode =
  | "invalid_request"
  | "unauthorized"
  | "forbidden"
  | "opt_out"
  | "session_not_found"
  | "method_not_allowed"
  | "rate_limit"
  | "openai_error"
  | "session_store_error"
  | "internal_error";

export const STATUS_BY_CODE: Record<ErrorCode, number> = {
  invalid_request: 400,
  unauthorized: 401,
  forbidden: 403,
  opt_out: 403,
  session_not_found: 404,
  method_not_allowed: 405,
  rate_limit: 429,
  openai_error: 502,
  session_store_error: 503,
  internal_error: 500,
};

/**
 * `message` goes to the client; `detail` only to the usage log and the
 * structured log line (never SQL text or upstream bodies to the client).
 */
export class AgentError extends Error {
  readonly status: number;
  constructor(
    readonly code: ErrorCode,
    message: string,
    readonly options: { detail?: string; headers?: Record<string, string> } = {},
  ) {
    super(message);
    this.name = "AgentError";
    this.status = STATUS_BY_CODE[code];
  }
  get detail(): string {
    return this.options.detail ?? this.message;
  }
}

export function describe(error: unknown): string {
  if (error instanceof Error) return `${error.name}: ${error.message}`.slice(0, 2000);
  return String(error).slice(0, 2000);
}
