/**
 * Owns token estimates for model calls whose usage the upstream never
 * reported (a stream cut short, a client gone mid-call): counted with the
 * o200k_base encoding of the maintained `gpt-tokenizer` package (the
 * encoding of the gpt-4o and gpt-4.1 families). The encoding (a few MB of
 * ranks) loads on first use only, so ordinary turns never pay for it.
 */
import type { ChatMessage, TokenUsage } from "./turn.ts";

/** Per-message framing tokens of the chat format (role and separators). */
const PER_MESSAGE = 4;

let encoding: Promise<{ countTokens(text: string): number }> | undefined;

async function count(text: string): Promise<number> {
  encoding ??= import("gpt-tokenizer/encoding/o200k_base");
  return (await encoding).countTokens(text);
}

/** The usage of a call: `prompt` as sent (system prompt included) and the `answer` text so far. */
export async function estimateUsage(
  prompt: ReadonlyArray<Pick<ChatMessage, "content">>,
  answer: string,
): Promise<TokenUsage> {
  let promptTokens = 3;
  for (const m of prompt) promptTokens += PER_MESSAGE + await count(m.content);
  const completionTokens = answer ? await count(answer) : 0;
  return {
    prompt_tokens: promptTokens,
    completion_tokens: completionTokens,
    total_tokens: promptTokens + completionTokens,
    cached_prompt_tokens: 0,
  };
}
