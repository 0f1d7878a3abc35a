/**
 * The model behind the assistant, through the official `openai` SDK (which
 * honours OPENAI_BASE_URL and timeouts; retries are counted in
 * model-retry.ts). One narrow interface for the handler: a whole answer, or
 * a stream of text deltas and final usage.
 */
import OpenAI from "openai";
import type { ChatMessage, ModelAttempt, ModelRoute, TokenUsage } from "./turn.ts";
import { neverConnected, RetriesExhausted, withRetries } from "./model-retry.ts";
import { createFetchCompletion } from "./model-fetch.ts";
import { storable } from "../_shared/text.ts";

export interface ModelAnswer {
  text: string;
  /** As the upstream reported it; undefined when it did not (some proxies never do). */
  usage: TokenUsage | undefined;
  model: string;
  /** Earlier attempts of this call that may have been billed (timed out or cut off). */
  unsettledAttempts: number;
  /** Each upstream tried for this answer, in order (fallbacks.ts); absent from a single client. */
  attempts?: ModelAttempt[] | undefined;
}

export interface ModelClient {
  /** `route`: a tenant policy's model and fallbacks (fallbacks.ts); a single client ignores it. */
  complete(messages: ChatMessage[], signal: AbortSignal, route?: ModelRoute): Promise<ModelAnswer>;
  /** Text deltas, then one `done` event with the whole answer; throws ModelError. */
  stream(
    messages: ChatMessage[],
    signal: AbortSignal,
    route?: ModelRoute,
  ): AsyncIterable<StreamEvent>;
}

export type StreamEvent = { type: "delta"; text: string } | { type: "done"; answer: ModelAnswer };

/** How a model call failed, for fallbacks and the breaker (fallbacks.ts). */
export type FailureKind = "status" | "timeout" | "refused" | "connection" | "other";

export class ModelError extends Error {
  constructor(
    message: string,
    readonly status?: number,
    readonly unsettledAttempts = 0,
    readonly kind: FailureKind = status === undefined ? "other" : "status",
    readonly attempts?: ModelAttempt[],
  ) {
    super(message);
    this.name = "ModelError";
  }
}

export interface ModelOptions {
  apiKey: string;
  baseURL: string | undefined;
  model: string;
  systemPrompt: string;
  maxOutputTokens: number;
  timeoutMs: number;
  maxRetries: number;
  /** Non-streaming calls as one plain fetch (model-fetch.ts, the default) or through the SDK. */
  client?: "sdk" | "fetch";
}

/**
 * A token count as reported, made storable: a whole number from 0 to the
 * column's maximum (a negative count would lower a month's spend; anything
 * that is no number counts as 0).
 */
function count(n: unknown): number {
  if (typeof n !== "number" || !(n > 0)) return 0;
  return Math.min(Math.floor(n), 2_147_483_647);
}

function usageOf(raw: OpenAI.CompletionUsage | null | undefined): TokenUsage | undefined {
  if (!raw) return undefined;
  return {
    prompt_tokens: count(raw.prompt_tokens),
    completion_tokens: count(raw.completion_tokens),
    total_tokens: count(raw.total_tokens),
    cached_prompt_tokens: count(raw.prompt_tokens_details?.cached_tokens),
  };
}

function wrap(thrown: unknown, unsettled = 0): ModelError {
  if (thrown instanceof RetriesExhausted) return wrap(thrown.cause, thrown.unsettled);
  if (thrown instanceof ModelError) return thrown;
  if (thrown instanceof OpenAI.APIError) {
    return new ModelError(
      `openai ${thrown.status ?? "connection"}: ${thrown.message}`.slice(0, 1000),
      thrown.status,
      unsettled,
      failureKind(thrown),
    );
  }
  const message = thrown instanceof Error ? `${thrown.name}: ${thrown.message}` : String(thrown);
  // A TypeError is fetch's network failure (a reset); a SyntaxError a malformed body.
  const kind = thrown instanceof TypeError ? "connection" : "other";
  return new ModelError(message, undefined, unsettled, kind);
}

function failureKind(error: InstanceType<typeof OpenAI.APIError>): FailureKind {
  if (error instanceof OpenAI.APIConnectionTimeoutError) return "timeout";
  if (neverConnected(error)) return "refused";
  if (error instanceof OpenAI.APIConnectionError) return "connection";
  return error.status === undefined ? "other" : "status";
}

export function createOpenAIModel(options: ModelOptions): ModelClient {
  const client = new OpenAI({
    apiKey: options.apiKey,
    baseURL: options.baseURL,
    timeout: options.timeoutMs,
    maxRetries: 0,
  });
  const params = (messages: ChatMessage[]) => ({
    model: options.model,
    messages: [{ role: "system" as const, content: options.systemPrompt }, ...messages],
    max_completion_tokens: options.maxOutputTokens,
  });
  const retried = <T>(call: () => Promise<T>, signal: AbortSignal) =>
    withRetries(call, options.maxRetries, signal);
  const create = options.client !== "sdk"
    ? createFetchCompletion({
      apiKey: options.apiKey,
      baseURL: options.baseURL ?? "https://api.openai.com/v1",
      timeoutMs: options.timeoutMs,
    })
    : (body: OpenAI.ChatCompletionCreateParamsNonStreaming, signal: AbortSignal) =>
      client.chat.completions.create(body, { signal });

  return {
    async complete(messages, signal) {
      try {
        const { value: res, unsettled: unsettledAttempts } = await retried(
          () => create(params(messages), signal),
          signal,
        );
        const text = res.choices?.[0]?.message?.content;
        if (typeof text !== "string") throw new ModelError("openai answer has no message content");
        // What the upstream sends is stored: no unpaired surrogate or NUL may reach Postgres.
        const model = storable(res.model ?? options.model);
        return { text: storable(text), usage: usageOf(res.usage), model, unsettledAttempts };
      } catch (error) {
        throw wrap(error);
      }
    },
    async *stream(messages, signal) {
      try {
        // Like the SDK, only the opening request is retried, never a stream under way.
        const { value: chunks, unsettled } = await retried(
          () =>
            client.chat.completions.create({
              ...params(messages),
              stream: true,
              stream_options: { include_usage: true },
            }, { signal }),
          signal,
        );
        yield* relayChunks(chunks, options.model, unsettled);
      } catch (error) {
        throw wrap(error);
      }
    },
  };
}

/** The SDK's chunks as text deltas, then one `done` with the whole answer. */
async function* relayChunks(
  chunks: AsyncIterable<OpenAI.ChatCompletionChunk>,
  requested: string,
  unsettledAttempts: number,
): AsyncGenerator<StreamEvent> {
  let text = "";
  let usage: TokenUsage | undefined;
  let model = requested;
  let finished = false;
  for await (const chunk of chunks) {
    if (chunk.model) model = chunk.model;
    if (chunk.usage) usage = usageOf(chunk.usage);
    const choice = chunk.choices?.[0];
    if (choice?.finish_reason) finished = true;
    const delta = choice?.delta?.content;
    if (delta) {
      text += delta;
      yield { type: "delta", text: delta };
    }
  }
  if (!finished) throw new ModelError("openai stream ended before the answer finished");
  // The whole text, made storable once (a pair split across two deltas is whole here).
  const answer = { text: storable(text), usage, model: storable(model), unsettledAttempts };
  yield { type: "done", answer };
}
