/**
 * Owns agent-chat's configuration: one zod schema over the environment with
 * every default in it, the `Config` type inferred from it, and one
 * `ConfigError` listing every problem. Connection rules live beside their
 * users (database.ts, redis-client.ts).
 */
import { z } from "zod";
import {
  bool,
  ConfigError,
  int,
  isLoopback,
  oneOf,
  optionalInt,
  optionalText,
  problemsOf,
  serviceKeysFrom,
  text,
  url,
  webUrlProblem,
} from "../_shared/env.ts";
import { resolveDatabase } from "./database.ts";
import { chainProblem, resolveFallbacks } from "./model-upstreams.ts";
import { RESERVATION_SECONDS } from "./admission.ts";
import { resolveRedis } from "./redis-client.ts";

export { ConfigError };

export const DEFAULT_SYSTEM_PROMPT =
  "You are the assistant of a savings-group platform. Help members and group officers with " +
  "savings, loans, contributions and meetings. Be brief and accurate; if you do not know an " +
  "account-specific fact, say so and point to the group's officers. Never ask for PINs or passwords.";

const CHANNEL = /^[a-z][a-z0-9_-]{0,31}$/;

const envSchema = z.object({
  SUPABASE_URL: url(),
  SUPABASE_SERVICE_ROLE_KEY: optionalText(),
  SUPABASE_SECRET_KEYS: optionalText(),
  SUPABASE_JWT_SECRET: optionalText(),
  SUPABASE_JWKS_URL: url(),
  SUPABASE_JWT_ISSUER: optionalText(),
  SUPABASE_DB_URL: optionalText(),
  AI_AGENT_DATABASE_URL: optionalText(),
  AI_AGENT_DB_TRANSPORT: z.preprocess(
    (v) => (v === "" ? undefined : v),
    z.enum(["rpc", "postgres"]).optional(),
  ),
  AI_AGENT_DB_TIMEOUT_MS: int(100, 60_000, 5000),
  AI_AGENT_SESSION_STORE: oneOf(["supabase", "redis"], "supabase"),
  AI_AGENT_SESSION_TTL_SECONDS: int(60, 365 * 86400, 86400),
  AI_AGENT_SESSION_MAX_MESSAGES: int(0, 1000, 20),
  AI_AGENT_REDIS_URL: optionalText(),
  UPSTASH_REDIS_REST_URL: optionalText(),
  AI_AGENT_REDIS_TOKEN: optionalText(),
  UPSTASH_REDIS_REST_TOKEN: optionalText(),
  AI_AGENT_REDIS_ALLOW_INSECURE: bool(false),
  AI_AGENT_RATE_LIMIT_MAX_REQUESTS: int(1, 1_000_000, 30),
  AI_AGENT_RATE_LIMIT_ORG_MAX_REQUESTS: optionalInt(1, 1_000_000),
  AI_AGENT_RATE_LIMIT_USER_MAX_REQUESTS: optionalInt(1, 1_000_000),
  AI_AGENT_RATE_LIMIT_IP_MAX_REQUESTS: optionalInt(1, 1_000_000),
  AI_AGENT_RATE_LIMIT_WINDOW_SECONDS: int(1, 86400, 60),
  AI_AGENT_TRUSTED_PROXY_HOPS: int(0, 10, 1),
  AI_AGENT_USAGE_LOG_ENABLED: bool(true),
  AI_AGENT_REFUSAL_LOG_INTERVAL_SECONDS: int(1, 3600, 60),
  AI_AGENT_IP_REFUSAL_LIMIT: int(1, 1_000_000, 30),
  AI_AGENT_USER_CHANNELS: text("app,web"),
  AI_AGENT_MODEL: text("gpt-4.1-mini"),
  AI_AGENT_SYSTEM_PROMPT: text(DEFAULT_SYSTEM_PROMPT),
  AI_AGENT_MAX_OUTPUT_TOKENS: int(1, 128_000, 800),
  AI_AGENT_OPENAI_TIMEOUT_MS: int(1000, 600_000, 30_000),
  AI_AGENT_OPENAI_MAX_RETRIES: int(0, 10, 1),
  // Below the 10-minute reservation and Idempotency-Key lease (a save may be
  // retried for as long again) and the platform's wall-clock limit (150 s on
  // the free plan, 400 s on paid plans).
  AI_AGENT_TURN_DEADLINE_SECONDS: int(2, 240, 120),
  AI_AGENT_OPENAI_CLIENT: oneOf(["fetch", "sdk"], "fetch"),
  AI_AGENT_MAX_MESSAGE_CHARS: int(1, 100_000, 4000),
  AI_AGENT_MAX_BODY_BYTES: int(1024, 10_000_000, 32_768),
  AI_AGENT_BODY_TIMEOUT_MS: int(100, 120_000, 10_000),
  AI_AGENT_ALLOWED_ORIGINS: text("*"),
  OPENAI_API_KEY: optionalText(),
  OPENAI_BASE_URL: url(),
  AI_AGENT_MODEL_FALLBACKS: optionalText(),
  AI_AGENT_BREAKER_FAILURES: int(1, 1000, 5),
  AI_AGENT_BREAKER_OPEN_SECONDS: int(1, 3600, 30),
  AI_AGENT_SHUTDOWN_GRACE_MS: int(0, 600_000, 25_000),
});

type Env = z.output<typeof envSchema>;

function toConfig(e: Env, env: Record<string, string | undefined>, problems: string[]) {
  const serviceKeys = serviceKeysFrom(
    e.SUPABASE_SERVICE_ROLE_KEY,
    e.SUPABASE_SECRET_KEYS,
    problems,
  );
  const shared = e.AI_AGENT_RATE_LIMIT_MAX_REQUESTS;
  return {
    supabaseUrl: e.SUPABASE_URL,
    /** Keys that authenticate service mode (service-role key, secret API keys). */
    serviceKeys,
    jwtSecret: e.SUPABASE_JWT_SECRET,
    jwksUrl: e.SUPABASE_JWKS_URL ?? authUrl(e.SUPABASE_URL, "/.well-known/jwks.json"),
    jwtIssuer: e.SUPABASE_JWT_ISSUER ?? authUrl(e.SUPABASE_URL, "") ?? "",
    database: resolveDatabase(e, serviceKeys, problems),
    databaseTimeoutMs: e.AI_AGENT_DB_TIMEOUT_MS,
    sessionStore: e.AI_AGENT_SESSION_STORE,
    sessionTtlSeconds: e.AI_AGENT_SESSION_TTL_SECONDS,
    sessionMaxMessages: e.AI_AGENT_SESSION_MAX_MESSAGES,
    redis: e.AI_AGENT_SESSION_STORE === "redis" ? resolveRedis(e, problems) : undefined,
    rateLimit: {
      org: e.AI_AGENT_RATE_LIMIT_ORG_MAX_REQUESTS ?? shared,
      user: e.AI_AGENT_RATE_LIMIT_USER_MAX_REQUESTS ?? shared,
      ip: e.AI_AGENT_RATE_LIMIT_IP_MAX_REQUESTS ?? shared,
      windowSeconds: e.AI_AGENT_RATE_LIMIT_WINDOW_SECONDS,
    },
    trustedProxyHops: e.AI_AGENT_TRUSTED_PROXY_HOPS,
    usageLogEnabled: e.AI_AGENT_USAGE_LOG_ENABLED,
    refusalLogIntervalSeconds: e.AI_AGENT_REFUSAL_LOG_INTERVAL_SECONDS,
    ipRefusalLimit: e.AI_AGENT_IP_REFUSAL_LIMIT,
    userChannels: userChannelsFrom(e.AI_AGENT_USER_CHANNELS, problems),
    model: e.AI_AGENT_MODEL,
    systemPrompt: e.AI_AGENT_SYSTEM_PROMPT,
    maxOutputTokens: e.AI_AGENT_MAX_OUTPUT_TOKENS,
    /** Every model call of a turn (JSON or stream, retries included) ends by then. */
    turnDeadlineSeconds: e.AI_AGENT_TURN_DEADLINE_SECONDS,
    /** Model calls one turn may be billed for: the first and its retries. */
    modelAttempts: e.AI_AGENT_OPENAI_MAX_RETRIES + 1,
    openai: {
      apiKey: e.OPENAI_API_KEY,
      baseURL: e.OPENAI_BASE_URL,
      timeoutMs: e.AI_AGENT_OPENAI_TIMEOUT_MS,
      maxRetries: e.AI_AGENT_OPENAI_MAX_RETRIES,
      client: e.AI_AGENT_OPENAI_CLIENT,
    },
    ...upstreamsConfig(e, env, problems),
    maxMessageChars: e.AI_AGENT_MAX_MESSAGE_CHARS,
    maxBodyBytes: e.AI_AGENT_MAX_BODY_BYTES,
    bodyTimeoutMs: e.AI_AGENT_BODY_TIMEOUT_MS,
    allowedOrigins: e.AI_AGENT_ALLOWED_ORIGINS,
  };
}

/** The fallbacks, their breakers and the clean stop (model-upstreams.ts, shutdown.ts). */
function upstreamsConfig(e: Env, env: Record<string, string | undefined>, problems: string[]) {
  const primary = { model: e.AI_AGENT_MODEL, baseURL: e.OPENAI_BASE_URL, apiKey: e.OPENAI_API_KEY };
  return {
    fallbacks: resolveFallbacks(e.AI_AGENT_MODEL_FALLBACKS, primary, env, problems),
    breaker: {
      failures: e.AI_AGENT_BREAKER_FAILURES,
      openSeconds: e.AI_AGENT_BREAKER_OPEN_SECONDS,
    },
    /** How long a stopping isolate lets the turns under way finish. */
    shutdownGraceMs: e.AI_AGENT_SHUTDOWN_GRACE_MS,
  };
}

export type Config = ReturnType<typeof toConfig>;
export type SessionStoreKind = Config["sessionStore"];

export function loadConfig(env: Record<string, string | undefined>): Config {
  const parsed = envSchema.safeParse(env);
  if (!parsed.success) throw new ConfigError(problemsOf(parsed.error));
  const e = parsed.data;
  const problems: string[] = [];
  const config = toConfig(e, env, problems);
  if (!e.SUPABASE_JWT_SECRET && !e.SUPABASE_JWKS_URL && !e.SUPABASE_URL) {
    problems.push(
      "SUPABASE_URL (for its JWKS), SUPABASE_JWKS_URL or SUPABASE_JWT_SECRET: needed to verify user tokens",
    );
  }
  if (!config.jwtIssuer) {
    problems.push(
      "SUPABASE_JWT_ISSUER (or SUPABASE_URL): needed to check the issuer of user tokens",
    );
  }
  const baseUrlProblem = e.OPENAI_BASE_URL && webUrlProblem(e.OPENAI_BASE_URL);
  if (baseUrlProblem) problems.push(`OPENAI_BASE_URL: ${baseUrlProblem}`);
  const localModel = e.OPENAI_BASE_URL !== undefined &&
    isLoopback(new URL(e.OPENAI_BASE_URL).hostname);
  if (!e.OPENAI_API_KEY && !localModel) {
    problems.push(
      "OPENAI_API_KEY: required (only a loopback OPENAI_BASE_URL, the local stand-in, may go without)",
    );
  }
  // Checked where fallbacks multiply the timeout (a single upstream keeps its old bounds).
  const slow = config.fallbacks.length > 0 && chainProblem(
    config.openai.timeoutMs,
    config.openai.maxRetries,
    config.fallbacks.length,
    RESERVATION_SECONDS,
  );
  if (slow) problems.push(slow);
  if (problems.length > 0) throw new ConfigError(problems);
  return config;
}

function authUrl(supabaseUrl: string | undefined, path: string): string | undefined {
  return supabaseUrl ? new URL(`/auth/v1${path}`, supabaseUrl).href : undefined;
}

function userChannelsFrom(raw: string, problems: string[]): string[] {
  const channels = raw.split(",").map((s) => s.trim()).filter(Boolean);
  const bad = channels.filter((c) => !CHANNEL.test(c));
  if (channels.length === 0 || bad.length > 0) {
    problems.push(
      `AI_AGENT_USER_CHANNELS: a comma-separated list of lowercase channel names (got ${
        JSON.stringify(raw)
      })`,
    );
  }
  return channels;
}
