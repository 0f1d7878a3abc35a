/**
 * The one local stack behind `npm run dev`, `deno task test`, the benchmark
 * and the reliability suite: PostgreSQL (migrated), Redis, the platform
 * stand-ins (gateway with Auth and PostgREST, OpenAI, Upstash) and the
 * function, either in this process or as its own process.
 *
 * Everything a stack starts is stopped by `stack.stop()`, in reverse order,
 * once however many callers ask. That is also the one Ctrl-C path: SIGINT or
 * SIGTERM stops the stack, then exits (130 by default).
 */
import type { JWK } from "jose";
import { type PostgresServer, startPostgres, type StartPostgresOptions } from "./postgres.ts";
import { type RedisServer, startRedis } from "./redis.ts";
import { migrate } from "./migrate.ts";
import { type AuthStandIn, createAuthStandIn } from "../stand-ins/auth.ts";
import { type Gateway, startGateway } from "../stand-ins/gateway.ts";
import { createOpenAIStandIn, type OpenAIStandIn } from "../stand-ins/openai.ts";
import { createUpstashStandIn, type UpstashStandIn } from "../stand-ins/upstash.ts";
import { type Config, loadConfig } from "../../functions/agent-chat/config.ts";
import { buildDependencies } from "../../functions/agent-chat/deps.ts";
import { type AgentChatDeps, createAgentChatHandler } from "../../functions/agent-chat/handler.ts";
import type { Logger } from "../../functions/_shared/log.ts";
import { loadAlertsConfig } from "../../functions/agent-alerts/config.ts";
import { buildAlertsDependencies } from "../../functions/agent-alerts/deps.ts";
import { createAlertsHandler } from "../../functions/agent-alerts/handler.ts";

type Cleanup = () => Promise<unknown> | unknown;

export interface LocalStackOptions {
  postgres?: StartPostgresOptions;
  /** Create pg_cron (and so schedule the migrations' jobs); default: when installed. */
  pgCron?: boolean;
  redis?: { port?: number; durable?: boolean };
  /** Progress lines (migrations applied, ...). */
  log?: (line: string) => void;
  /** Exit code after a SIGINT/SIGTERM stopped the stack; `false`: leave signals alone. */
  exitOnSignal?: number | false;
}

export interface LocalStack {
  postgres: PostgresServer;
  redis: RedisServer;
  /** Runs `cleanup` when the stack stops (the last one deferred runs first). */
  defer(cleanup: Cleanup): void;
  /** The gateway, stand-ins and the function in this process, stopped with the stack. */
  startPlatform(options?: Omit<PlatformOptions, "databaseUrl">): Promise<Platform>;
  /** A Deno program that prints `{"port": n}` when it listens, stopped with the stack. */
  spawn(script: string, env: Record<string, string>, options?: SpawnOptions): Promise<Service>;
  stop(): Promise<void>;
}

/** Collects cleanups and runs them once, newest first, on stop or on a signal. */
function lifecycle(exitOnSignal: number | false) {
  const cleanups: Cleanup[] = [];
  let stopping: Promise<void> | undefined;
  const stop = () =>
    stopping ??= (async () => {
      for (const fn of cleanups.reverse()) {
        try {
          await fn();
        } catch { /* keep stopping the rest */ }
      }
    })();
  if (exitOnSignal !== false) {
    const onSignal = () => {
      stop().finally(() => Deno.exit(exitOnSignal));
    };
    for (const signal of ["SIGINT", "SIGTERM"] as const) Deno.addSignalListener(signal, onSignal);
    cleanups.push(() => {
      for (const signal of ["SIGINT", "SIGTERM"] as const) {
        Deno.removeSignalListener(signal, onSignal);
      }
    });
  }
  return { defer: (fn: Cleanup) => void cleanups.push(fn), stop };
}

export async function startLocalStack(options: LocalStackOptions = {}): Promise<LocalStack> {
  const { defer, stop } = lifecycle(options.exitOnSignal ?? 130);
  try {
    const postgres = await startPostgres({ fast: true, ...options.postgres });
    defer(() => postgres.stop());
    await migrate(postgres.url, {
      pgCron: postgres.hasPgCron && (options.pgCron ?? true),
      log: options.log,
    });
    const redis = await startRedis(options.redis);
    defer(() => redis.stop());
    return {
      postgres,
      redis,
      defer,
      stop,
      async startPlatform(platformOptions = {}) {
        const platform = await startPlatform({ databaseUrl: postgres.url, ...platformOptions });
        defer(() => platform.stop());
        return platform;
      },
      async spawn(script, env, spawnOptions) {
        const service = await spawnService(script, env, spawnOptions);
        defer(() => service.stop());
        return service;
      },
    };
  } catch (error) {
    await stop();
    throw error;
  }
}

// ------------------------------------------------------------ in process

export interface PlatformOptions {
  databaseUrl: string;
  /** The gateway's port; default a free one (`npm run dev` uses 54321). */
  port?: number;
  /** Auth signing key; default a new one. */
  signingKey?: JWK;
  /** The project's secret (service) and publishable (anon) API keys; default new ones. */
  secretKey?: string;
  publishableKey?: string;
  /** Auth issuer; default the stand-in's own. */
  issuer?: string;
  /** Serve the OpenAI stand-in and point the function at it (default true). */
  openai?: boolean;
  /** Put the Upstash REST stand-in in front of this Redis and point the function at it. */
  upstashFor?: string;
  /** The function's environment, over what the platform provides. */
  env?: Record<string, string>;
  log?: Logger;
  extendLifetime?: ((promise: Promise<unknown>) => void) | undefined;
  /** The circuit breakers' clock (milliseconds), for tests that move time. */
  now?: () => number;
  /** Swap one dependency (a failing transport, say) after they are built. */
  adjust?: (deps: AgentChatDeps) => void;
}

export interface Platform {
  gateway: Gateway;
  auth: AuthStandIn;
  openai: OpenAIStandIn | undefined;
  upstash: UpstashStandIn | undefined;
  /** The secret key the gateway and the function accept as the service role. */
  secretKey: string;
  /** The publishable (anon) key: supabase-js' `createClient(projectUrl, publishableKey)`. */
  publishableKey: string;
  config: Config;
  /** The project URL (the gateway), as `SUPABASE_URL`. */
  projectUrl: string;
  functionUrl: string;
  /** agent-alerts beside agent-chat (POST with secretKey runs one cycle). */
  alertsUrl: string;
  stop(): Promise<void>;
}

/**
 * The hosted platform around agent-chat, as `supabase start` serves it: the
 * gateway (Auth JWKS, PostgREST RPC) with the function's handler built by
 * `loadConfig` + `buildDependencies` exactly as index.ts does, at
 * /functions/v1/agent-chat, and agent-alerts (built as its index.ts does) at
 * /functions/v1/agent-alerts.
 */
export async function startPlatform(options: PlatformOptions): Promise<Platform> {
  const secretKey = options.secretKey ?? newApiKey("secret");
  const publishableKey = options.publishableKey ?? newApiKey("publishable");
  const auth = await createAuthStandIn({
    ...(options.signingKey ? { signingKey: options.signingKey } : {}),
    ...(options.issuer ? { issuer: options.issuer } : {}),
  });
  const gateway = startGateway({
    databaseUrl: options.databaseUrl,
    auth,
    secretKeys: [secretKey],
    publishableKeys: [publishableKey],
    ...(options.port ? { port: options.port } : {}),
  });
  const openai = options.openai === false ? undefined : createOpenAIStandIn();
  const upstash = options.upstashFor
    ? createUpstashStandIn({ redisUrl: options.upstashFor })
    : undefined;
  const stopAll = async () => {
    await gateway.stop();
    await openai?.stop();
    await upstash?.stop();
  };
  try {
    const config = loadConfig({
      SUPABASE_URL: gateway.url,
      SUPABASE_SERVICE_ROLE_KEY: secretKey,
      SUPABASE_JWT_SECRET: auth.jwtSecret,
      SUPABASE_JWT_ISSUER: auth.issuer,
      ...(openai ? { OPENAI_API_KEY: "sk-local-stand-in", OPENAI_BASE_URL: openai.baseURL } : {}),
      ...(upstash ? { AI_AGENT_REDIS_URL: upstash.url, AI_AGENT_REDIS_TOKEN: upstash.token } : {}),
      ...options.env,
    });
    const deps = buildDependencies(config, {
      ...(options.log ? { log: options.log } : {}),
      ...("extendLifetime" in options ? { extendLifetime: options.extendLifetime } : {}),
      ...(options.now ? { now: options.now } : {}),
    });
    options.adjust?.(deps);
    gateway.setFunction(createAgentChatHandler(deps));
    const alertsConfig = loadAlertsConfig({
      ...options.env,
      SUPABASE_URL: gateway.url,
      SUPABASE_SERVICE_ROLE_KEY: secretKey,
    });
    gateway.setFunction(
      createAlertsHandler(
        buildAlertsDependencies(alertsConfig, options.log ? { log: options.log } : {}),
      ),
      "agent-alerts",
    );
    return {
      gateway,
      auth,
      openai,
      upstash,
      secretKey,
      publishableKey,
      config,
      projectUrl: gateway.url,
      functionUrl: gateway.functionUrl,
      alertsUrl: `${gateway.functionsUrl}/agent-alerts`,
      async stop() {
        await deps.close();
        await stopAll();
      },
    };
  } catch (error) {
    await stopAll();
    throw error;
  }
}

/** A new opaque API key in the hosted format (`sb_secret_…`, `sb_publishable_…`). */
export function newApiKey(kind: "secret" | "publishable"): string {
  return `sb_${kind}_${crypto.randomUUID().replaceAll("-", "")}`;
}

// ------------------------------------------------------------ processes

export interface Service {
  port: number;
  url: string;
  pid: number;
  /** Milliseconds from spawn to the `{"port"}` line. */
  startedInMs: number;
  stop(): Promise<void>;
}

export interface SpawnOptions {
  timeoutMs?: number;
  denoFlags?: string[];
}

/** The function as its own process (EdgeRuntime.waitUntil as hosted), configured by `env`. */
export const functionProcess = new URL("./serve-function.ts", import.meta.url).pathname;
/** The OpenAI and Auth stand-ins as one process, signing with AGENT_CHAT_SIGNING_KEY. */
export const standInsProcess = new URL("../stand-ins/serve.ts", import.meta.url).pathname;

/** Runs a Deno program that prints `{"port": n}` once it listens; resolves then. */
export async function spawnService(
  script: string,
  env: Record<string, string>,
  options: SpawnOptions = {},
): Promise<Service> {
  const started = performance.now();
  const child = new Deno.Command(Deno.execPath(), {
    // request.signal aborts only when the client goes away (no abort, and no
    // DOMException, after every answered request): what the handler assumes.
    args: [
      "run",
      "--allow-all",
      "--no-check",
      "--unstable-no-legacy-abort",
      ...(options.denoFlags ?? []),
      script,
    ],
    env: { ...env, NO_COLOR: "1" },
    stdout: "piped",
    stderr: "inherit",
    stdin: "null",
  }).spawn();
  const stop = async () => {
    try {
      child.kill("SIGTERM");
    } catch { /* already gone */ }
    const killer = setTimeout(() => {
      try {
        child.kill("SIGKILL");
      } catch { /* gone */ }
    }, 5000);
    await child.status;
    clearTimeout(killer);
  };
  const reader = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
  let buffered = "";
  const timer = setTimeout(() => {
    try {
      child.kill("SIGKILL");
    } catch { /* gone */ }
  }, options.timeoutMs ?? 60_000);
  try {
    while (true) {
      const { value, done } = await reader.read();
      if (done) throw new Error(`${script} exited before listening`);
      buffered += value;
      const m = /\{"port":(\d+)\}/.exec(buffered);
      if (!m) continue;
      // Keep draining stdout so the child never blocks on a full pipe.
      (async () => {
        try {
          while (!(await reader.read()).done) { /* discard */ }
        } catch { /* closed */ }
      })();
      const port = Number(m[1]);
      return {
        port,
        url: `http://127.0.0.1:${port}`,
        pid: child.pid,
        startedInMs: performance.now() - started,
        stop,
      };
    }
  } catch (error) {
    await stop();
    throw error;
  } finally {
    clearTimeout(timer);
  }
}
