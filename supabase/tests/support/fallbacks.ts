/**
 * A harness whose primary (`primary-model` on the OpenAI stand-in) has two
 * fallbacks: `refused-model` on a loopback port nothing listens on, then
 * `backup-model` on a second stand-in with its own key.
 */
import { createOpenAIStandIn, type OpenAIStandIn } from "../stand-ins/openai.ts";
import type { Harness, HarnessOptions } from "./function-harness.ts";
import { withHarness } from "./test-helpers.ts";

/** A loopback port nothing listens on: connections to it are refused. */
export function closedPort(): number {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const { port } = listener.addr as Deno.NetAddr;
  listener.close();
  return port;
}

/** The harness with two fallbacks: `refused-model` (no listener), then `backup-model` (`backup`). */
export async function withFallbacks(
  options: HarnessOptions,
  fn: (h: Harness, backup: OpenAIStandIn) => Promise<void>,
) {
  const backup = createOpenAIStandIn();
  const fallbacks = [
    { model: "refused-model", base_url: `http://127.0.0.1:${closedPort()}/v1` },
    { model: "backup-model", base_url: backup.baseURL, api_key_env: "BACKUP_OPENAI_KEY" },
  ];
  try {
    await withHarness({
      ...options,
      env: {
        AI_AGENT_MODEL: "primary-model",
        AI_AGENT_MODEL_FALLBACKS: JSON.stringify(fallbacks),
        BACKUP_OPENAI_KEY: "sk-backup",
        ...options.env,
      },
    }, (h) => fn(h, backup));
  } finally {
    await backup.stop();
  }
}

type Attempt = { model: string; outcome: string; billed: string; breaker?: string };
export const attemptsOf = (row: Record<string, unknown>) =>
  (row.metadata as { model_attempts?: Attempt[] }).model_attempts ?? [];
export const brief = (a: Attempt) => `${a.model.replace(/-2025.*/, "")} ${a.outcome} ${a.billed}`;
