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
import { modelChainFor } from "./model-upstreams.ts";
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
  overrides: {
    log?: Logger;
    extendLifetime?: ExtendLifetime | undefined;
    /** The breakers' monotonic clock in milliseconds (tests move it). */
    now?: () => number;
  } = {},
): AgentChatDeps & { close(): Promise<void> } {
  const log = overrides.log ?? consoleLogger;
  const extendLifetime = "extendLifetime" in overrides
    ? overrides.extendLifetime
    : edgeRuntimeLifetime();
  const db = createDatabase(config);
  const redis = config.redis ? connectRedis(config.redis.url, config.redis.token) : undefined;
  const limits = { ttlSeconds: config.sessionTtlSeconds, maxMessages: config.sessionMaxMessages };
  // Inserts handed to the runtime are tracked too, so close() waits for them.
  const lifetime = trackedLifetime(extendLifetime);
  const tracked = lifetime.extend;
  const recovery = createRecovery({ log, extendLifetime: tracked });
  const enabled = config.usageLogEnabled;
  const usage = createUsageLogger({ enabled, db, log, extendLifetime: tracked, recovery });
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
    model: modelChainFor(config, overrides.now, log),
    usage,
    recovery,
    refusals,
    log,
    extendLifetime: tracked,
    close: async () => {
      // The counted refusals first, then every insert under way, then the connections.
      await refusals.close();
      await lifetime.settled(5000); // the inserts under way
      await recovery.settled(2000); // what the stores did not take yet gets a last chance
      await redis?.close();
      await db.close();
    },
  };
  return deps;
}

/** `extendLifetime` that also remembers what it was handed, until it settles. */
function trackedLifetime(extendLifetime: ExtendLifetime | undefined) {
  const inflight = new Set<Promise<unknown>>();
  const extend: ExtendLifetime | undefined = extendLifetime && ((promise) => {
    inflight.add(promise);
    const done = () => void inflight.delete(promise);
    promise.then(done, done);
    extendLifetime(promise);
  });
  /** Resolves when what was handed has settled, or after `ms` (a drain loop may run on). */
  const settled = async (ms: number) => {
    let timer: ReturnType<typeof setTimeout> | undefined;
    const bound = new Promise<void>((resolve) => (timer = setTimeout(resolve, ms)));
    await Promise.race([Promise.allSettled([...inflight]), bound]);
    clearTimeout(timer);
  };
  return { extend, settled };
}
