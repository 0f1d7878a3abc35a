/**
 * Owns building the handler's dependencies from the configuration, once per
 * isolate: one database transport, one Redis client, one OpenAI client, one
 * usage logger, one durable retry and one refusal ledger.
 */
import { createClient } from "@supabase/supabase-js";
import { createAuthenticator } from "../_shared/auth.ts";
import { consoleLogger, type Logger } from "../_shared/log.ts";
import type { Config } from "./config.ts";
import {
  connectPostgres,
  createPostgresDatabase,
  createRpcDatabase,
  type TurnDatabase,
} from "./database.ts";
import type { AgentChatDeps } from "./handler.ts";
import { createOpenAIModel } from "./model.ts";
import { connectRedis } from "./redis-client.ts";
import { createRecovery } from "./recovery.ts";
import { createRefusalLedger } from "./refusals.ts";
import { createRedisSessionStore, createSupabaseSessionStore } from "./session-store.ts";
import { createUsageLogger, edgeRuntimeLifetime, type ExtendLifetime } from "./usage.ts";

export function createDatabase(
  config: Pick<Config, "database" | "databaseTimeoutMs">,
): TurnDatabase {
  const { database } = config;
  if (database.transport === "postgres") {
    return createPostgresDatabase(() => connectPostgres(database.url), config.databaseTimeoutMs);
  }
  const client = createClient(database.url, database.key, {
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
  const extendLifetime = "extendLifetime" in overrides
    ? overrides.extendLifetime
    : edgeRuntimeLifetime();
  const db = createDatabase(config);
  const redis = config.redis ? connectRedis(config.redis.url, config.redis.token) : undefined;
  const limits = { ttlSeconds: config.sessionTtlSeconds, maxMessages: config.sessionMaxMessages };
  const recovery = createRecovery({ log, extendLifetime });
  const enabled = config.usageLogEnabled;
  const usage = createUsageLogger({ enabled, db, log, extendLifetime, recovery });
  // Refusal rows go through whichever usage logger the deps hold (tests may swap it).
  const refusals = createRefusalLedger({
    intervalMs: config.refusalLogIntervalSeconds * 1000,
    ipLimit: config.ipRefusalLimit,
    write: (event) => deps.usage.record(event),
  });
  const deps: AgentChatDeps & { close(): Promise<void> } = {
    settings: { ...config, transport: config.database.transport },
    authenticate: createAuthenticator({
      jwksUrl: config.jwksUrl,
      jwtSecret: config.jwtSecret,
      issuer: config.jwtIssuer,
      serviceKeys: config.serviceKeys,
    }),
    db,
    sessions: redis
      ? createRedisSessionStore(redis, limits)
      : createSupabaseSessionStore(db, limits),
    model: createOpenAIModel({
      // Only a loopback stand-in may go without a key (checked by loadConfig).
      apiKey: config.openai.apiKey ?? "local-stand-in",
      baseURL: config.openai.baseURL,
      model: config.model,
      systemPrompt: config.systemPrompt,
      maxOutputTokens: config.maxOutputTokens,
      timeoutMs: config.openai.timeoutMs,
      maxRetries: config.openai.maxRetries,
      client: config.openai.client,
    }),
    usage,
    recovery,
    refusals,
    log,
    extendLifetime,
    close: async () => {
      await refusals.close();
      await recovery.settled(2000); // what the stores did not take yet gets a last chance
      await redis?.close();
      await db.close();
    },
  };
  return deps;
}
