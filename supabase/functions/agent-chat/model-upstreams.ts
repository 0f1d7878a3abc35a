/**
 * Owns the upstreams' configuration and wiring: AI_AGENT_MODEL_FALLBACKS
 * read and checked at start (every problem names its entry), and the one
 * ModelClient of the isolate: the primary, then each fallback, each behind
 * its breaker (fallbacks.ts).
 *
 * Entry: `{ "model": "…", "base_url"?: "…", "api_key_env"?: "NAME" }`. No
 * base_url: the primary's (OPENAI_BASE_URL, else OpenAI's). No api_key_env:
 * OPENAI_API_KEY. A base URL is `https://`, or `http://` to a loopback host.
 * Retries (AI_AGENT_OPENAI_MAX_RETRIES) apply to the last upstream only: an
 * upstream with another behind it hands over at once instead of backing off.
 */
import { z } from "zod";
import { isLoopback, webUrlProblem } from "../_shared/env.ts";
import type { Logger } from "../_shared/log.ts";
import { createBreakers, createFallbackModel, type Upstream, upstreamLabel } from "./fallbacks.ts";
import type { ModelRoute } from "./turn.ts";
import { createOpenAIModel, type ModelClient, type ModelOptions } from "./model.ts";

export const DEFAULT_OPENAI_BASE_URL = "https://api.openai.com/v1";
const VARIABLE = "AI_AGENT_MODEL_FALLBACKS";
/** Each upstream tried costs up to a timeout: a turn's reservation bounds how many make sense. */
const MAX_FALLBACKS = 8;
/** The platform's and this function's own secrets are never sent to an upstream as its key. */
const NOT_A_MODEL_KEY = /^(SUPABASE_|AI_AGENT_|UPSTASH_)/;

export interface FallbackUpstream {
  model: string;
  baseURL: string;
  /** The key, read from the named variable at start (never logged). */
  apiKey: string | undefined;
}

const entrySchema = z.strictObject({
  model: z.string().trim().min(1).max(128),
  base_url: z.string().optional(),
  api_key_env: z.string().regex(/^[A-Za-z_][A-Za-z0-9_]*$/, "a variable name").optional(),
});

/** The fallbacks as configured, or the problems, each naming `AI_AGENT_MODEL_FALLBACKS[i]`. */
export function resolveFallbacks(
  raw: string | undefined,
  primary: { model: string; baseURL: string | undefined; apiKey: string | undefined },
  env: Record<string, string | undefined>,
  problems: string[],
): FallbackUpstream[] {
  if (raw === undefined) return [];
  let list: unknown;
  try {
    list = JSON.parse(raw);
  } catch {
    problems.push(`${VARIABLE}: not valid JSON (a JSON array of {model, base_url?, api_key_env?})`);
    return [];
  }
  if (!Array.isArray(list) || list.length > MAX_FALLBACKS) {
    problems.push(
      `${VARIABLE}: a JSON array of at most ${MAX_FALLBACKS} {model, base_url?, api_key_env?}`,
    );
    return [];
  }
  const primaryURL = primary.baseURL ?? DEFAULT_OPENAI_BASE_URL;
  const seen = new Set([upstreamLabel(primary.model, primaryURL)]);
  return list.flatMap((item, i) => {
    const name = `${VARIABLE}[${i}]`;
    const entry = resolveEntry(item, name, primaryURL, primary.apiKey, env, problems);
    if (!entry) return [];
    const label = upstreamLabel(entry.model, entry.baseURL);
    if (seen.has(label)) problems.push(`${name}: repeats the upstream ${label}`);
    seen.add(label);
    return [entry];
  });
}

function resolveEntry(
  item: unknown,
  name: string,
  primaryURL: string,
  primaryKey: string | undefined,
  env: Record<string, string | undefined>,
  problems: string[],
): FallbackUpstream | undefined {
  const parsed = entrySchema.safeParse(item);
  if (!parsed.success) {
    for (const issue of parsed.error.issues) {
      const field = issue.path.length > 0 ? `.${issue.path.join(".")}` : "";
      problems.push(`${name}${field}: ${issue.message}`);
    }
    return undefined;
  }
  const { model, base_url, api_key_env } = parsed.data;
  if (api_key_env && NOT_A_MODEL_KEY.test(api_key_env)) {
    problems.push(
      `${name}.api_key_env: ${api_key_env} is not a model key (SUPABASE_*, AI_AGENT_* and UPSTASH_* are never sent upstream)`,
    );
    return undefined;
  }
  const urlProblem = base_url === undefined ? undefined : webUrlProblem(base_url);
  if (urlProblem) problems.push(`${name}.base_url: ${urlProblem}`);
  const keyName = api_key_env ?? "OPENAI_API_KEY";
  const apiKey = api_key_env ? env[api_key_env]?.trim() || undefined : primaryKey;
  const baseURL = urlProblem ? primaryURL : base_url ?? primaryURL;
  if (!apiKey && !isLoopback(new URL(baseURL).hostname)) {
    problems.push(
      `${name}.api_key_env: ${keyName} is unset (only a loopback base_url may go without a key)`,
    );
  }
  if (urlProblem) return undefined;
  return { model, baseURL, apiKey };
}

export interface ChainSettings {
  primary: FallbackUpstream;
  fallbacks: FallbackUpstream[];
  client: Omit<ModelOptions, "apiKey" | "baseURL" | "model">;
  breaker: { failures: number; openSeconds: number };
  now?: (() => number) | undefined;
  log?: Logger | undefined;
}

/** The isolate's model: the primary and its fallbacks, each behind its breaker. */
export function createModelChain(settings: ChainSettings): ModelClient {
  const breakerFor = createBreakers({ ...settings.breaker, now: settings.now, log: settings.log });
  const clients = new Map<string, Upstream>();
  // One client per upstream and retry rule, made on first use (a policy's models too).
  const upstream = (up: FallbackUpstream, last: boolean): Upstream => {
    const key = `${upstreamLabel(up.model, up.baseURL)} ${last}`;
    let made = clients.get(key);
    if (!made) {
      made = {
        model: up.model,
        breaker: breakerFor(upstreamLabel(up.model, up.baseURL)),
        client: createOpenAIModel({
          ...settings.client,
          // Only a loopback stand-in may go without a key (checked by loadConfig).
          apiKey: up.apiKey ?? "local-stand-in",
          baseURL: up.baseURL,
          model: up.model,
          maxRetries: last ? settings.client.maxRetries : 0,
        }),
      };
      clients.set(key, made);
    }
    return made;
  };
  const inOrder = (list: FallbackUpstream[]) =>
    list.map((up, i) => upstream(up, i === list.length - 1));
  return createFallbackModel(
    inOrder([settings.primary, ...settings.fallbacks]),
    (route) => inOrder(routeUpstreams(route, settings.primary, settings.fallbacks)),
  );
}

/**
 * A tenant policy's route as upstreams: each model at its configured
 * upstream (the primary's or a fallback's with that model), else at the
 * primary's base URL and key. No fallbacks named: the configured ones when
 * the model is the environment's, else none.
 */
export function routeUpstreams(
  route: ModelRoute,
  primary: FallbackUpstream,
  fallbacks: FallbackUpstream[],
): FallbackUpstream[] {
  const model = route.model || primary.model;
  const configured = [primary, ...fallbacks];
  const names = route.fallbacks ??
    (model === primary.model ? fallbacks.map((f) => f.model) : []);
  return [model, ...names].map((name) =>
    configured.find((up) => up.model === name) ?? { ...primary, model: name }
  );
}

/** What the chain needs of the configuration (config.ts' `Config` has it). */
export interface ChainConfig {
  model: string;
  systemPrompt: string;
  maxOutputTokens: number;
  openai: {
    apiKey: string | undefined;
    baseURL: string | undefined;
    timeoutMs: number;
    maxRetries: number;
    client: "sdk" | "fetch";
  };
  fallbacks: FallbackUpstream[];
  breaker: { failures: number; openSeconds: number };
}

/** The chain as the configuration describes it (deps.ts). */
export function modelChainFor(
  config: ChainConfig,
  now: (() => number) | undefined,
  log: Logger,
): ModelClient {
  return createModelChain({
    primary: {
      model: config.model,
      baseURL: config.openai.baseURL ?? DEFAULT_OPENAI_BASE_URL,
      apiKey: config.openai.apiKey,
    },
    fallbacks: config.fallbacks,
    client: {
      systemPrompt: config.systemPrompt,
      maxOutputTokens: config.maxOutputTokens,
      timeoutMs: config.openai.timeoutMs,
      maxRetries: config.openai.maxRetries,
      client: config.openai.client,
    },
    breaker: config.breaker,
    now,
    log,
  });
}

/**
 * The longest the model calls of one turn can take: a timeout per upstream,
 * plus the last one's retries (each after at most a 60 s Retry-After).
 * It must stay below the turn's token reservation (admission.ts,
 * RESERVATION_SECONDS), or a slow outage could outlive what the turn holds.
 */
export function chainProblem(
  timeoutMs: number,
  maxRetries: number,
  fallbacks: number,
  reservationSeconds: number,
): string | undefined {
  const worstMs = timeoutMs * (1 + fallbacks + maxRetries) + maxRetries * 60_000;
  const limitMs = reservationSeconds * 1000 * 0.9;
  if (worstMs <= limitMs) return undefined;
  return `AI_AGENT_OPENAI_TIMEOUT_MS × (1 + fallbacks + AI_AGENT_OPENAI_MAX_RETRIES) (+ 60 s a retry): a turn's model calls could take ${
    Math.round(worstMs / 1000)
  } s, over the ${
    Math.round(limitMs / 1000)
  } s a turn may take; lower the timeout or use fewer fallbacks`;
}
