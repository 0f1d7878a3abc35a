/**
 * Owns one outbound POST to a destination: bounded in time (a slow or hung
 * receiver is an error after `timeoutMs`, the body read included), every
 * failure (refused connection, 5xx, timeout) an outcome, never a throw.
 */
import type { SendOutcome } from "./notification.ts";

export type Fetch = typeof fetch;

export async function postJson(
  request: { url: string; body: string; headers?: Record<string, string> },
  options: { timeoutMs: number; fetch?: Fetch },
): Promise<SendOutcome> {
  const signal = AbortSignal.timeout(options.timeoutMs);
  try {
    const response = await (options.fetch ?? fetch)(request.url, {
      method: "POST",
      headers: { "content-type": "application/json", ...request.headers },
      body: request.body,
      signal,
      redirect: "manual",
    });
    if (response.status >= 200 && response.status < 300) {
      await response.body?.cancel();
      return { outcome: "delivered", status: response.status };
    }
    const text = await firstBytes(response);
    return { outcome: "error", status: response.status, error: `HTTP ${response.status}: ${text}` };
  } catch (error) {
    if (signal.aborted) {
      return { outcome: "error", error: `no answer within ${options.timeoutMs} ms` };
    }
    return { outcome: "error", error: describeFailure(error) };
  }
}

/** fetch's TypeError says "fetch failed"; its cause says why (connection refused, DNS, TLS). */
function describeFailure(error: unknown): string {
  if (!(error instanceof Error)) return String(error);
  const cause = error.cause instanceof Error ? `: ${error.cause.message}` : "";
  return `${error.message}${cause}`.slice(0, 300);
}

/** The start of an error answer, for the outbox's last_error; the rest is never read. */
async function firstBytes(response: Response): Promise<string> {
  const reader = response.body?.getReader();
  if (!reader) return "";
  const { value } = await reader.read();
  await reader.cancel().catch(() => {});
  return new TextDecoder().decode(value ?? new Uint8Array()).slice(0, 300);
}
