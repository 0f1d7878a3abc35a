/**
 * The non-streaming chat completion as one plain `fetch` (AI_AGENT_OPENAI_CLIENT=fetch):
 * the same request body and the same errors as the SDK's (its own error
 * classes, so retries and the error contract do not change), without the
 * SDK's per-request work (header merging, request logging objects, URL
 * redaction). Streams always go through the SDK.
 */
import OpenAI from "openai";

export interface FetchCompletionOptions {
  apiKey: string;
  baseURL: string;
  timeoutMs: number;
  fetch?: typeof fetch;
}

export type ChatCompletionBody = OpenAI.ChatCompletionCreateParamsNonStreaming;

export function createFetchCompletion(options: FetchCompletionOptions) {
  const url = `${options.baseURL.replace(/\/+$/, "")}/chat/completions`;
  const headers = {
    authorization: `Bearer ${options.apiKey}`,
    "content-type": "application/json",
    accept: "application/json",
  };
  const send = options.fetch ?? fetch;

  return async function create(
    body: ChatCompletionBody,
    signal: AbortSignal,
  ): Promise<OpenAI.ChatCompletion> {
    const timeout = new AbortController();
    const timer = setTimeout(() => timeout.abort(), options.timeoutMs);
    const onAbort = () => timeout.abort();
    signal.addEventListener("abort", onAbort, { once: true });
    try {
      const res = await send(url, {
        method: "POST",
        headers,
        body: JSON.stringify(body),
        signal: timeout.signal,
      });
      const text = await res.text();
      if (!res.ok) throw apiError(res, text);
      return JSON.parse(text) as OpenAI.ChatCompletion;
    } catch (error) {
      if (error instanceof OpenAI.APIError) throw error;
      if (signal.aborted) throw new OpenAI.APIUserAbortError();
      if (timeout.signal.aborted) throw new OpenAI.APIConnectionTimeoutError();
      if (error instanceof SyntaxError) throw error;
      throw new OpenAI.APIConnectionError({ cause: error as Error });
    } finally {
      clearTimeout(timer);
      signal.removeEventListener("abort", onAbort);
    }
  };
}

function apiError(res: Response, text: string) {
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch {
    json = undefined;
  }
  const message = json === undefined ? text.slice(0, 500) : undefined;
  return OpenAI.APIError.generate(res.status, json as object, message, res.headers);
}
