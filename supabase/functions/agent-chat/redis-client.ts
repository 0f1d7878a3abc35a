/**
 * One Redis client per isolate, chosen by URL scheme:
 *   https://  Upstash REST via @upstash/redis (token required)
 *   rediss:// TCP over TLS via ioredis
 *   redis://  TCP in clear text (loopback, or AI_AGENT_REDIS_ALLOW_INSECURE)
 * Scripts run by SHA (EVALSHA) and are loaded on NOSCRIPT by either client.
 */
import { Redis as UpstashRedis } from "@upstash/redis";
import { Redis as IORedis } from "ioredis";
import { isLoopback } from "../_shared/env.ts";
import { APPEND_SCRIPT, LOAD_SCRIPT, type RedisScriptRunner } from "./session-store.ts";

export interface RedisEnv {
  AI_AGENT_REDIS_URL?: string | undefined;
  UPSTASH_REDIS_REST_URL?: string | undefined;
  AI_AGENT_REDIS_TOKEN?: string | undefined;
  UPSTASH_REDIS_REST_TOKEN?: string | undefined;
  AI_AGENT_REDIS_ALLOW_INSECURE: boolean;
}

/**
 * The Redis URL rules: https:// needs a token; redis:// and http:// send
 * data in clear text, so only to loopback unless explicitly allowed.
 */
export function resolveRedis(
  e: RedisEnv,
  problems: string[],
): { url: string; token: string | undefined } | undefined {
  const url = e.AI_AGENT_REDIS_URL ?? e.UPSTASH_REDIS_REST_URL;
  const token = e.AI_AGENT_REDIS_TOKEN ?? e.UPSTASH_REDIS_REST_TOKEN;
  if (!url) {
    problems.push("AI_AGENT_REDIS_URL: required when AI_AGENT_SESSION_STORE=redis");
    return undefined;
  }
  let u: URL;
  try {
    u = new URL(url);
  } catch {
    problems.push("AI_AGENT_REDIS_URL: not a URL");
    return undefined;
  }
  const clearText = u.protocol === "redis:" || u.protocol === "http:";
  if (!["https:", "rediss:", "redis:", "http:"].includes(u.protocol)) {
    problems.push("AI_AGENT_REDIS_URL: use https:// (Upstash REST), rediss:// or redis://");
  } else if (u.protocol === "https:" && !token) {
    problems.push(
      "AI_AGENT_REDIS_TOKEN (or UPSTASH_REDIS_REST_TOKEN): required for an https:// (Upstash REST) URL",
    );
  } else if (clearText && !isLoopback(u.hostname) && !e.AI_AGENT_REDIS_ALLOW_INSECURE) {
    problems.push(
      `AI_AGENT_REDIS_URL: ${u.protocol}// sends data in clear text; use rediss:// or https:// (Upstash), ` +
        "or set AI_AGENT_REDIS_ALLOW_INSECURE=true",
    );
  }
  return { url, token };
}

export interface RedisConnection<Name extends string = keyof typeof SESSION_SCRIPTS>
  extends RedisScriptRunner<Name> {
  close(): Promise<void>;
}

const SESSION_SCRIPTS = { load: LOAD_SCRIPT, append: APPEND_SCRIPT } as const;

/** The session store's connection; `scripts` gives another set (the operator CLI's). */
export function connectRedis(url: string, token: string | undefined): RedisConnection;
export function connectRedis<Name extends string>(
  url: string,
  token: string | undefined,
  scripts: Record<Name, string>,
): RedisConnection<Name>;
export function connectRedis(
  url: string,
  token: string | undefined,
  scripts: Record<string, string> = SESSION_SCRIPTS,
): RedisConnection<string> {
  const scheme = new URL(url).protocol;
  if (scheme === "https:" || scheme === "http:") return upstash(url, token ?? "", scripts);
  return tcp(url, scripts);
}

function upstash(
  url: string,
  token: string,
  lua: Record<string, string>,
): RedisConnection<string> {
  const client = new UpstashRedis({
    url,
    token,
    automaticDeserialization: false,
    enableTelemetry: false,
    retry: { retries: 1, backoff: () => 50 },
  });
  const scripts = Object.fromEntries(
    Object.entries(lua).map(([name, body]) => [name, client.createScript(body)]),
  );
  return {
    run: (name, keys, args) => scripts[name]!.exec(keys, args),
    close: () => Promise.resolve(),
  };
}

function tcp(url: string, scripts: Record<string, string>): RedisConnection<string> {
  const client = new IORedis(url, {
    lazyConnect: false,
    maxRetriesPerRequest: 1,
    connectTimeout: 2000,
    commandTimeout: 2000,
    enableOfflineQueue: true,
    retryStrategy: (times: number) => Math.min(times * 100, 1000),
  });
  // Errors surface on the command that fails, naming the connection's last
  // error (an untrusted certificate, a refused port); the connection keeps retrying.
  let lastError: Error | undefined;
  client.on("error", (error: Error) => void (lastError = error));
  client.on("ready", () => void (lastError = undefined));
  // No fixed numberOfKeys: each call passes its key count first (EVALSHA's numkeys).
  for (const [name, lua] of Object.entries(scripts)) {
    client.defineCommand(`agentChat_${name}`, { lua });
  }
  const commands = client as unknown as Record<
    string,
    (...a: Array<string | number>) => Promise<unknown>
  >;
  return {
    run: (name, keys, args) =>
      commands[`agentChat_${name}`]!(keys.length, ...keys, ...args).catch((error: Error) => {
        if (!lastError) throw error;
        throw new Error(`${error.message} (connection: ${lastError.message})`, { cause: error });
      }),
    close: async () => {
      client.disconnect();
      await Promise.resolve();
    },
  };
}
