/**
 * Configuration: parsed once per isolate from a plain object of environment
 * variables. An empty string counts as unset; every error names the variable.
 */
import { z } from "zod";

const emptyToUndefined = (v: unknown) => (typeof v === "string" && v.trim() === "" ? undefined : v);
const int = (min: number, max: number) =>
  z.preprocess(emptyToUndefined, z.coerce.number().int().min(min).max(max).optional());
const bool = z.preprocess(
  emptyToUndefined,
  z.enum(["true", "false", "1", "0", "yes", "no"]).optional().transform((v) =>
    v === undefined ? undefined : ["true", "1", "yes"].includes(v)
  ),
);
const str = z.preprocess(emptyToUndefined, z.string().optional());
const url = z.preprocess(emptyToUndefined, z.url().optional());

const envSchema = z.object({
  SUPABASE_URL: url,
  SUPABASE_SERVICE_ROLE_KEY: str,
  SUPABASE_SECRET_KEYS: str,
  SUPABASE_JWT_SECRET: str,
  SUPABASE_JWKS_URL: url,
  SUPABASE_DB_URL: str,
  AI_AGENT_DATABASE_URL: str,
  AI_AGENT_DB_TRANSPORT: z.preprocess(emptyToUndefined, z.enum(["rpc", "postgres"]).optional()),
  AI_AGENT_SESSION_STORE: z.preprocess(
    emptyToUndefined,
    z.enum(["supabase", "redis"]).default("supabase"),
  ),
  AI_AGENT_SESSION_TTL_SECONDS: int(60, 365 * 86400),
  AI_AGENT_SESSION_MAX_MESSAGES: int(0, 1000),
  AI_AGENT_REDIS_URL: str,
  UPSTASH_REDIS_REST_URL: str,
  AI_AGENT_REDIS_TOKEN: str,
  UPSTASH_REDIS_REST_TOKEN: str,
  AI_AGENT_REDIS_ALLOW_INSECURE: bool,
  AI_AGENT_RATE_LIMIT_MAX_REQUESTS: int(1, 1_000_000),
  AI_AGENT_RATE_LIMIT_ORG_MAX_REQUESTS: int(1, 1_000_000),
  AI_AGENT_RATE_LIMIT_USER_MAX_REQUESTS: int(1, 1_000_000),
  AI_AGENT_RATE_LIMIT_IP_MAX_REQUESTS: int(1, 1_000_000),
  AI_AGENT_RATE_LIMIT_WINDOW_SECONDS: int(1, 86400),
  AI_AGENT_TRUSTED_PROXY_HOPS: int(0, 10),
  AI_AGENT_USAGE_LOG_ENABLED: bool,
  AI_AGENT_MODEL: str,
  AI_AGENT_SYSTEM_PROMPT: str,
  AI_AGENT_MAX_OUTPUT_TOKENS: int(1, 128_000),
  AI_AGENT_OPENAI_TIMEOUT_MS: int(1000, 600_000),
  AI_AGENT_OPENAI_MAX_RETRIES: int(0, 10),
  AI_AGENT_MAX_MESSAGE_CHARS: int(1, 100_000),
  AI_AGENT_DB_TIMEOUT_MS: int(100, 60_000),
  AI_AGENT_MAX_BODY_BYTES: int(1024, 10_000_000),
  AI_AGENT_ALLOWED_ORIGINS: str,
  OPENAI_API_KEY: str,
  OPENAI_BASE_URL: url,
});

export type SessionStoreKind = "supabase" | "redis";

export interface Config {
  supabaseUrl: string | undefined;
  /** Keys that authenticate service mode (service-role key, secret API keys). */
  serviceKeys: string[];
  /** Key used by the Data API transport (service-role or secret key). */
  serviceRoleKey: string | undefined;
  jwtSecret: string | undefined;
  jwksUrl: string | undefined;
  database: { transport: "rpc" } | { transport: "postgres"; url: string };
  /** Longest wait for one database call before the request gets a 503. */
  databaseTimeoutMs: number;
  sessionStore: SessionStoreKind;
  sessionTtlSeconds: number;
  sessionMaxMessages: number;
  redis: { url: string; token: string | undefined } | undefined;
  rateLimit: { org: number; user: number; ip: number; windowSeconds: number };
  trustedProxyHops: number;
  usageLogEnabled: boolean;
  model: string;
  systemPrompt: string;
  maxOutputTokens: number;
  openai: {
    apiKey: string | undefined;
    baseURL: string | undefined;
    timeoutMs: number;
    maxRetries: number;
  };
  maxMessageChars: number;
  maxBodyBytes: number;
  allowedOrigins: string;
}

export const DEFAULT_SYSTEM_PROMPT =
  "You are the assistant of a savings-group platform. Help members and group officers with " +
  "savings, loans, contributions and meetings. Be brief and accurate; if you do not know an " +
  "account-specific fact, say so and point to the group's officers. Never ask for PINs or passwords.";

export class ConfigError extends Error {
  constructor(readonly problems: string[]) {
    super(`invalid configuration:\n  - ${problems.join("\n  - ")}`);
    this.name = "ConfigError";
  }
}

function isLoopback(hostname: string): boolean {
  const h = hostname.replace(/^\[|\]$/g, "");
  return h === "localhost" || h === "::1" || /^127\./.test(h);
}

export function loadConfig(env: Record<string, string | undefined>): Config {
  const parsed = envSchema.safeParse(env);
  if (!parsed.success) {
    throw new ConfigError(
      parsed.error.issues.map((i) => `${i.path.join(".")}: ${i.message}`),
    );
  }
  const e = parsed.data;
  const problems: string[] = [];

  const serviceKeys = [
    e.SUPABASE_SERVICE_ROLE_KEY,
    ...(e.SUPABASE_SECRET_KEYS ? parseSecretKeys(e.SUPABASE_SECRET_KEYS) : []),
  ].filter((k): k is string => typeof k === "string" && k.length > 0);

  const dbUrl = e.AI_AGENT_DATABASE_URL ??
    (e.AI_AGENT_DB_TRANSPORT === "postgres" ? e.SUPABASE_DB_URL : undefined);
  let database: Config["database"];
  if (e.AI_AGENT_DB_TRANSPORT === "postgres" || (e.AI_AGENT_DB_TRANSPORT === undefined && dbUrl)) {
    if (!dbUrl) {
      problems.push(
        "AI_AGENT_DB_TRANSPORT=postgres needs AI_AGENT_DATABASE_URL or SUPABASE_DB_URL",
      );
    }
    database = { transport: "postgres", url: dbUrl ?? "" };
  } else {
    if (!e.SUPABASE_URL) problems.push("SUPABASE_URL: required for the Data API transport");
    if (serviceKeys.length === 0) {
      problems.push(
        "SUPABASE_SERVICE_ROLE_KEY or SUPABASE_SECRET_KEYS: required for the Data API transport",
      );
    }
    database = { transport: "rpc" };
  }

  let redis: Config["redis"];
  if (e.AI_AGENT_SESSION_STORE === "redis") {
    const redisUrl = e.AI_AGENT_REDIS_URL ?? e.UPSTASH_REDIS_REST_URL;
    const token = e.AI_AGENT_REDIS_TOKEN ?? e.UPSTASH_REDIS_REST_TOKEN;
    if (!redisUrl) {
      problems.push("AI_AGENT_REDIS_URL: required when AI_AGENT_SESSION_STORE=redis");
    } else {
      let u: URL | undefined;
      try {
        u = new URL(redisUrl);
      } catch {
        problems.push("AI_AGENT_REDIS_URL: not a URL");
      }
      if (u?.protocol === "https:" && !token) {
        problems.push(
          "AI_AGENT_REDIS_TOKEN (or UPSTASH_REDIS_REST_TOKEN): required for an https:// (Upstash REST) URL",
        );
      } else if (
        u?.protocol === "redis:" && !isLoopback(u.hostname) && !e.AI_AGENT_REDIS_ALLOW_INSECURE
      ) {
        problems.push(
          "AI_AGENT_REDIS_URL: redis:// sends data in clear text; use rediss:// or https:// (Upstash), " +
            "or set AI_AGENT_REDIS_ALLOW_INSECURE=true",
        );
      } else if (u && !["https:", "rediss:", "redis:", "http:"].includes(u.protocol)) {
        problems.push("AI_AGENT_REDIS_URL: use https:// (Upstash REST), rediss:// or redis://");
      } else if (
        u?.protocol === "http:" && !isLoopback(u.hostname) && !e.AI_AGENT_REDIS_ALLOW_INSECURE
      ) {
        problems.push("AI_AGENT_REDIS_URL: http:// is only allowed to a loopback host");
      }
      redis = { url: redisUrl, token };
    }
  }
  if (!e.SUPABASE_JWT_SECRET && !e.SUPABASE_JWKS_URL && !e.SUPABASE_URL) {
    problems.push(
      "SUPABASE_URL (for its JWKS), SUPABASE_JWKS_URL or SUPABASE_JWT_SECRET: needed to verify user tokens",
    );
  }
  const localModel = e.OPENAI_BASE_URL !== undefined &&
    isLoopback(new URL(e.OPENAI_BASE_URL).hostname);
  if (!e.OPENAI_API_KEY && !localModel) {
    problems.push(
      "OPENAI_API_KEY: required (only a loopback OPENAI_BASE_URL, the local stand-in, may go without)",
    );
  }
  if (problems.length > 0) throw new ConfigError(problems);

  const shared = e.AI_AGENT_RATE_LIMIT_MAX_REQUESTS ?? 30;
  return {
    supabaseUrl: e.SUPABASE_URL,
    serviceKeys,
    serviceRoleKey: serviceKeys[0],
    jwtSecret: e.SUPABASE_JWT_SECRET,
    jwksUrl: e.SUPABASE_JWKS_URL ??
      (e.SUPABASE_URL ? new URL("/auth/v1/.well-known/jwks.json", e.SUPABASE_URL).href : undefined),
    database,
    databaseTimeoutMs: e.AI_AGENT_DB_TIMEOUT_MS ?? 5000,
    sessionStore: e.AI_AGENT_SESSION_STORE,
    sessionTtlSeconds: e.AI_AGENT_SESSION_TTL_SECONDS ?? 86400,
    sessionMaxMessages: e.AI_AGENT_SESSION_MAX_MESSAGES ?? 20,
    redis,
    rateLimit: {
      org: e.AI_AGENT_RATE_LIMIT_ORG_MAX_REQUESTS ?? shared,
      user: e.AI_AGENT_RATE_LIMIT_USER_MAX_REQUESTS ?? shared,
      ip: e.AI_AGENT_RATE_LIMIT_IP_MAX_REQUESTS ?? shared,
      windowSeconds: e.AI_AGENT_RATE_LIMIT_WINDOW_SECONDS ?? 60,
    },
    trustedProxyHops: e.AI_AGENT_TRUSTED_PROXY_HOPS ?? 1,
    usageLogEnabled: e.AI_AGENT_USAGE_LOG_ENABLED ?? true,
    model: e.AI_AGENT_MODEL ?? "gpt-4.1-mini",
    systemPrompt: e.AI_AGENT_SYSTEM_PROMPT ?? DEFAULT_SYSTEM_PROMPT,
    maxOutputTokens: e.AI_AGENT_MAX_OUTPUT_TOKENS ?? 800,
    openai: {
      apiKey: e.OPENAI_API_KEY,
      baseURL: e.OPENAI_BASE_URL,
      timeoutMs: e.AI_AGENT_OPENAI_TIMEOUT_MS ?? 30_000,
      maxRetries: e.AI_AGENT_OPENAI_MAX_RETRIES ?? 1,
    },
    maxMessageChars: e.AI_AGENT_MAX_MESSAGE_CHARS ?? 4000,
    maxBodyBytes: e.AI_AGENT_MAX_BODY_BYTES ?? 32_768,
    allowedOrigins: e.AI_AGENT_ALLOWED_ORIGINS ?? "*",
  };
}

/**
 * SUPABASE_SECRET_KEYS on hosted projects is a JSON object of name → key;
 * a comma-separated list is accepted too.
 */
function parseSecretKeys(raw: string): string[] {
  const trimmed = raw.trim();
  if (trimmed.startsWith("{")) {
    try {
      const obj = JSON.parse(trimmed) as Record<string, unknown>;
      return Object.values(obj).filter((v): v is string => typeof v === "string");
    } catch {
      throw new ConfigError(["SUPABASE_SECRET_KEYS: not valid JSON"]);
    }
  }
  return trimmed.split(",").map((s) => s.trim()).filter(Boolean);
}
