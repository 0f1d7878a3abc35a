/**
 * Owns the error contract: the codes a client can receive, their HTTP
 * statuses, and the one error type the request path throws.
 */

export type ErrorCode =
  | "invalid_request"
  | "unauthorized"
  | "forbidden"
  | "opt_out"
  | "budget_exceeded"
  | "session_not_found"
  | "method_not_allowed"
  | "request_in_progress"
  | "idempotency_mismatch"
  | "rate_limit"
  | "openai_error"
  | "session_store_error"
  | "assistant_disabled"
  /** Every upstream's circuit breaker is open: nothing was sent; `Retry-After`. */
  | "upstream_unavailable"
  | "internal_error"
  /** The client went away: logged and metered, never sent (nobody is there to read it). */
  | "client_closed";

export const STATUS_BY_CODE: Record<ErrorCode, number> = {
  invalid_request: 400,
  unauthorized: 401,
  budget_exceeded: 402,
  forbidden: 403,
  opt_out: 403,
  session_not_found: 404,
  method_not_allowed: 405,
  request_in_progress: 409,
  client_closed: 499,
  idempotency_mismatch: 422,
  rate_limit: 429,
  internal_error: 500,
  openai_error: 502,
  session_store_error: 503,
  assistant_disabled: 503,
  upstream_unavailable: 503,
};

export interface AgentErrorOptions {
  /** Internal detail: to the usage row and the log line, never to the client. */
  detail?: string;
  headers?: Record<string, string>;
  /** Overrides the code's status (408 for a body that never arrived). */
  status?: number;
  /** The bucket scope that refused (rate_limit). */
  scope?: string;
  /** false: the caller is not a member of the org it named; its row must not name that org. */
  member?: boolean;
}

/** `message` goes to the client; `detail` only to the usage row and the log line. */
export class AgentError extends Error {
  readonly status: number;
  constructor(
    readonly code: ErrorCode,
    message: string,
    readonly options: AgentErrorOptions = {},
  ) {
    super(message);
    this.name = "AgentError";
    this.status = options.status ?? STATUS_BY_CODE[code];
  }
  get detail(): string {
    return this.options.detail ?? this.message;
  }
}

/** Any thrown value as an AgentError: unknown failures become a 500 with the cause as detail. */
export function asAgentError(error: unknown): AgentError {
  if (error instanceof AgentError) return error;
  return new AgentError("internal_error", "internal error", { detail: describe(error) });
}

export function describe(error: unknown): string {
  if (error instanceof Error) return `${error.name}: ${error.message}`.slice(0, 2000);
  return String(error).slice(0, 2000);
}
