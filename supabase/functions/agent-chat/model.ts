/**
 * The model behind the assistant, through the official `openai` SDK (which
 * honours OPENAI_BASE_URL, timeouts and retries). One narrow interface for
 * the handler: a whole answer, or a stream of text deltas and final usage.
 */
import OpenAI from "openai";
import type { ChatMessage } from "./database.ts";

export interface TokenUsage {
  prompt_tokens: number;
  completion_tokens: number;
  total_tokens: number;
  cached_prompt_tokens: number;
}

export interface ModelAnswer {
  text: string;
  usage: TokenUsage;
  model: string;
}

export interface ModelClient {
  complete(messages: ChatMessage[], signal: AbortSignal): Promise<ModelAnswer>;
  /** Text deltas, then one `done` event with the whole answer; throws ModelError. */
  stream(messages: ChatMessage[], signal: AbortSignal): AsyncIterable<StreamEvent>;
}

export type StreamEvent = { type: "delta"; text: string } | { type: "done"; answer: ModelAnswer };

export class ModelError extends Error {
  constructor(message: string, readonly status?: number) {
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
}

function usageOf(raw: OpenAI.CompletionUsage | null | undefined): TokenUsage {
  return {
    prompt_tokens: raw?.prompt_tokens ?? 0,
    completion_tokens: raw?.completion_tokens ?? 0,
    total_tokens: raw?.total_tokens ?? 0,
    cached_prompt_tokens: raw?.prompt_tokens_details?.cached_tokens ?? 0,
  };
}

function wrap(error: unknown): ModelError {
  if (error instanceof ModelError) return error;
  if (error instanceof OpenAI.APIError) {
    return new ModelError(
      `openai ${error.status ?? "connection"}: ${error.message}`.slice(0, 1000),
      error.status,
    );
  }
  return new ModelError(error instanceof Error ? `${error.name}: ${error.message}` : String(error));
}

export function createOpenAIModel(options: ModelOptions): ModelClient {
  const client = new OpenAI({
    apiKey: options.apiKey,
    baseURL: options.baseURL,
    timeout: options.timeoutMs,
    maxRetries: options.maxRetries,
  });
  const prompt = (messages: ChatMessage[]) => [
    { role: "system" as const, content: options.systemPrompt },
    ...messages,
  ];

  return {
    async complete(messages, signal) {
      try {
        const res = await client.chat.completions.create({
          model: options.model,
          messages: prompt(messages),
          max_completion_tokens: options.maxOutputTokens,
        }, { signal });
        const text = res.choices?.[0]?.message?.content;
        if (typeof text !== "string") throw new ModelError("openai answer has no message content");
        return { text, usage: usageOf(res.usage), model: res.model ?? options.model };
      } catch (error) {
        throw wrap(error);
      }
    },
    async *stream(messages, signal) {
      let text = "";
      let usage: TokenUsage | undefined;
      let model = options.model;
      let finished = false;
      try {
        const stream = await client.chat.completions.create({
          model: options.model,
          messages: prompt(messages),
          max_completion_tokens: options.maxOutputTokens,
          stream: true,
          stream_options: { include_usage: true },
        }, { signal });
        for await (const chunk of stream) {
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
      } catch (error) {
        throw wrap(error);
      }
      if (!finished) throw new ModelError("openai stream ended before the answer finished");
      yield { type: "done", answer: { text, usage: usage ?? usageOf(undefined), model } };
    },
  };
}
