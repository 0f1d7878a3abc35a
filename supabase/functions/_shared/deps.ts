/**
 * Builds the handler's dependencies from the configuration, once per
 * isolate: one database transport, one Redis client, one OpenAI client.
 */
import { createClient } from "@supabase/supabase-js";
import postgres from "postgres";
import { createAuthenticator } from "./auth.ts";
import type { Config } from "./config.ts";
import { createPostgresDatabase, createRpcDatabase, type TurnDatabase } from "./database.ts";
import type { AgentChatDeps } from "./handler.ts";
import { consoleLogger, type Logger } from "./log.ts";
import { createOpenAIModel } from "./model.ts";
import { connectRedis } from "./redis-client.ts";
import { createRedisSessionStore, createSupabaseSessionStore } from "./session-store.ts";
import { createUsageLogger, edgeRuntimeLifetime, type ExtendLifetime } from "./usage.ts";

export function createDatabase(config: Config): TurnDatabase {
  if (config.database.transport === "postgres") {
    const url = config.database.url;
    const connect = () =>
      postgres(url, {
        prepare: false, // safe behind Supavisor's transaction mode
        max: 4,
        idle_timeout: 30,
        connect_timeout: 5,
        onnotice: () => {},
      });
    return createPostgresDatabase(connect, config.databaseTimeoutMs);
  }
  const client = createClient(config.supabaseUrl!, config.serviceRoleKey!, {
    auth: { persistSession: false, autoRefreshToken: false, detectSessionInUrl: false },
    global: { headers: { "x-client-info": "agent-chat" } },
  });
  return createRpcDatabase(client, config.databaseTimeoutMs);
}

export function buildDependencies(
  config: Config,
  overrides: { log?: Logger; extendLifetime?: ExtendLifetime | undefined } = {},
): AgentChatDeps & { close(): Promise<void> } {
  const log = overrides.log ?? consoleLogger;
  const db = createDatabase(config);
  const redis = config.sessionStore === "redis" && config.redis
    ? connectRedis(config.redis.url, config.redis.token)
    : undefined;
  const limits = { ttlSeconds: config.sessionTtlSeconds, maxMessages: config.sessionMaxMessages };
  const sessions = redis
    ? createRedisSessionStore(redis, limits)
    : createSupabaseSessionStore(db, limits);
  return {
    settings: {
      model: config.model,
      sessionStore: config.sessionStore,
      sessionMaxMessages: config.sessionMaxMessages,
      rateLimit: config.rateLimit,
      trustedProxyHops: config.trustedProxyHops,
      maxMessageChars: config.maxMessageChars,
      maxBodyBytes: config.maxBodyBytes,
      allowedOrigins: config.allowedOrigins,
    },
    authenticate: createAuthenticator({
      jwksUrl: config.jwksUrl,
      jwtSecret: config.jwtSecret,
      serviceKeys: config.serviceKeys,
    }),
    db,
    sessions,
    model: createOpenAIModel({
      // Only a loopback stand-in may go without a key (checked by loadConfig).
      apiKey: config.openai.apiKey ?? "local-stand-in",
      baseURL: config.openai.baseURL,
      model: config.model,
      systemPrompt: config.systemPrompt,
      maxOutputTokens: config.maxOutputTokens,
      timeoutMs: config.openai.timeoutMs,
      maxRetries: config.openai.maxRetries,
    }),
    usage: createUsageLogger({
      enabled: config.usageLogEnabled,
      db,
      log,
      extendLifetime: "extendLifetime" in overrides
        ? overrides.extendLifetime
        : edgeRuntimeLifetime(),
    }),
    log,
    close: async () => {
      await redis?.close();
      await db.close();
    },
  };
}
