/**
 * Owns retries of model calls. The SDK's own retries are off (`maxRetries:
 * 0`) because they are invisible to the caller, and an attempt that timed
 * out or lost its connection may already have been billed by the upstream:
 * this loop keeps the SDK's policy (408, 409, 429, 5xx and connection
 * failures; exponential backoff from 0.5 s to 8 s with 25 % jitter, a
 * `retry-after(-ms)` of up to 60 s obeyed) and counts those attempts so the
 * usage row can meter them.
 */
import OpenAI from "openai";

export interface Attempted<T> {
  value: T;
  /** Attempts that failed after the request may have reached the model. */
  unsettled: number;
}

/** The error of the last attempt, with the count of attempts that may have been billed. */
export class RetriesExhausted extends Error {
  constructor(override readonly cause: unknown, readonly unsettled: number) {
    super("model call failed");
  }
}

export async function withRetries<T>(
  attempt: () => Promise<T>,
  maxRetries: number,
  signal: AbortSignal,
): Promise<Attempted<T>> {
  let unsettled = 0;
  for (let retry = 0;; retry++) {
    try {
      return { value: await attempt(), unsettled };
    } catch (error) {
      if (mayHaveBeenBilled(error)) unsettled++;
      if (retry >= maxRetries || signal.aborted || !retryable(error)) {
        throw new RetriesExhausted(error, unsettled);
      }
      await sleep(delayMs(error, retry), signal).catch(() => {
        throw new RetriesExhausted(error, unsettled);
      });
    }
  }
}

function retryable(error: unknown): boolean {
  if (error instanceof OpenAI.APIUserAbortError) return false;
  if (error instanceof OpenAI.APIConnectionError) return true;
  if (!(error instanceof OpenAI.APIError)) return false;
  const hint = error.headers?.get("x-should-retry");
  if (hint === "true" || hint === "false") return hint === "true";
  const status = error.status ?? 0;
  return status === 408 || status === 409 || status === 429 || status >= 500;
}

/**
 * Timed out or cut off after sending: the upstream may have run (and billed)
 * the prompt. A connection that never opened (refused, no such host) sent
 * nothing, and an error answer (4xx, 5xx) is not billed: neither is metered.
 */
export function mayHaveBeenBilled(error: unknown): boolean {
  if (!(error instanceof OpenAI.APIConnectionError) || error instanceof OpenAI.APIUserAbortError) {
    return false;
  }
  return error instanceof OpenAI.APIConnectionTimeoutError || !neverConnected(error);
}

const NOT_CONNECTED =
  /\(Connect\)|tcp connect error|connection refused|ECONNREFUSED|ENOTFOUND|EAI_AGAIN|dns error|failed to lookup address/i;

/** The error, or one of its causes, says the connection was never made. */
export function neverConnected(error: unknown): boolean {
  for (let e: unknown = error, depth = 0; e && depth < 5; depth++) {
    const { message, code, cause } = e as { message?: unknown; code?: unknown; cause?: unknown };
    if (NOT_CONNECTED.test(`${String(message ?? "")} ${String(code ?? "")}`)) return true;
    e = cause;
  }
  return false;
}

function delayMs(error: unknown, retry: number): number {
  const headers = error instanceof OpenAI.APIError ? error.headers : undefined;
  const ms = Number(headers?.get("retry-after-ms") ?? NaN);
  const seconds = Number(headers?.get("retry-after") ?? NaN) * 1000;
  const asked = Number.isFinite(ms) ? ms : seconds;
  if (Number.isFinite(asked) && asked >= 0 && asked <= 60_000) return asked;
  return Math.min(500 * 2 ** retry, 8000) * (1 - Math.random() * 0.25);
}

function sleep(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      signal.removeEventListener("abort", stop);
      resolve();
    }, ms);
    const stop = () => {
      clearTimeout(timer);
      reject(signal.reason);
    };
    signal.addEventListener("abort", stop, { once: true });
  });
}
