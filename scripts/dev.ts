/**
 * `deno task dev` (npm run dev): the local stack in one command, kept
 * running until Ctrl-C. PostgreSQL in .local/postgres (kept between runs,
 * migrated on every start), Redis, the gateway stand-in on 127.0.0.1:54321
 * serving agent-chat at /functions/v1/agent-chat as `supabase start` would,
 * and the OpenAI stand-in unless OPENAI_API_KEY is set. The API keys and the
 * database port stay the same across restarts (.local/dev-settings.json). A
 * second start in the same checkout says where the running one is and
 * leaves it alone.
 */
import { parseCommand, runCommand, UsageError } from "./cli.ts";
import {
  devSettings,
  localDir,
  runningState,
  saveDevSettings,
  settingsFile,
  signingKey,
  stateFile,
} from "./dev-state.ts";
import {
  type LocalStack,
  type Platform,
  startLocalStack,
} from "../supabase/tests/support/local-stack.ts";
import { alertIntervalSeconds, scheduleAlertCycles } from "./dev-alerts.ts";
import type { Config } from "../supabase/functions/agent-chat/config.ts";
import { DEFAULT_OPENAI_BASE_URL } from "../supabase/functions/agent-chat/model-upstreams.ts";

const usage = `usage: deno task dev   (npm run dev)

Starts PostgreSQL, Redis, the platform stand-ins and agent-chat; Ctrl-C stops them.
Every AI_AGENT_* / OPENAI_* variable in the environment overrides the defaults.
  AGENT_CHAT_DEV_PORT         the gateway's port (54321)
  AGENT_CHAT_DEV_DB_PORT      PostgreSQL's port (the last start's while free, else a free one)
  AGENT_CHAT_DEV_REDIS_PORT   Redis' port (a free one)
  AGENT_CHAT_DEV_SERVICE_KEY  the secret (service) key (saved in .local/dev-settings.json)
  AGENT_CHAT_DEV_ANON_KEY     the publishable (anon) key (saved in .local/dev-settings.json)
  AGENT_CHAT_LOCAL_DIR        where the database and state live (.local)`;

function portFrom(name: string, fallback?: number): number | undefined {
  const text = Deno.env.get(name);
  if (!text) return fallback;
  const port = Number(text);
  if (!Number.isInteger(port) || port < 1 || port > 65535) {
    throw new UsageError(`${name}: not a TCP port: ${text}`);
  }
  return port;
}

function portIsFree(port: number): boolean {
  try {
    Deno.listen({ hostname: "127.0.0.1", port }).close();
    return true;
  } catch {
    return false;
  }
}

async function main(): Promise<number> {
  const { values } = parseCommand({ usage, options: {} }, Deno.args);
  if (values.help) {
    console.log(usage);
    return 0;
  }
  const running = await runningState();
  if (running) {
    console.log(
      `agent-chat local stack already running at ${running.functionUrl} (pid ${running.pid}, postgres ${running.databaseUrl})`,
    );
    return 0;
  }
  const port = portFrom("AGENT_CHAT_DEV_PORT", 54321)!;
  if (!portIsFree(port)) {
    throw new UsageError(
      `AGENT_CHAT_DEV_PORT: 127.0.0.1:${port} is in use by another program (set another port)`,
    );
  }
  await Deno.mkdir(localDir, { recursive: true });
  const settings = await devSettings();
  const dbPort = databasePort(settings);
  const redisPort = portFrom("AGENT_CHAT_DEV_REDIS_PORT");
  const stack = await startLocalStack({
    postgres: { dataDir: `${localDir}/postgres`, fast: false, ...(dbPort ? { port: dbPort } : {}) },
    redis: redisPort ? { port: redisPort } : {},
    log: (l) => console.log(`  ${l}`),
    // Ctrl-C is how the dev stack is meant to stop.
    exitOnSignal: 0,
  });
  if (!Deno.env.get("AGENT_CHAT_DEV_DB_PORT") && settings.dbPort !== stack.postgres.port) {
    await saveDevSettings({ ...settings, dbPort: stack.postgres.port });
  }
  try {
    await serve(stack, port, keys(settings));
  } catch (error) {
    await stack.stop();
    throw error;
  }
  // Serve until a signal stops the stack (and exits the process).
  await new Promise(() => {});
  return 0;
}

/** The database port: the environment's, else the last start's while it is free, else a free one. */
function databasePort(settings: { dbPort?: number }): number | undefined {
  const fromEnv = portFrom("AGENT_CHAT_DEV_DB_PORT");
  if (fromEnv) return fromEnv;
  if (settings.dbPort && portIsFree(settings.dbPort)) return settings.dbPort;
  if (settings.dbPort) {
    console.log(`  postgres port ${settings.dbPort} is taken by another program; using a free one`);
  }
  return undefined;
}

/** The API keys: the environment's, else the saved ones. */
function keys(settings: { secretKey: string; publishableKey: string }) {
  return {
    secretKey: Deno.env.get("AGENT_CHAT_DEV_SERVICE_KEY") || settings.secretKey,
    publishableKey: Deno.env.get("AGENT_CHAT_DEV_ANON_KEY") || settings.publishableKey,
  };
}

async function serve(
  stack: LocalStack,
  port: number,
  apiKeys: { secretKey: string; publishableKey: string },
) {
  const env = Deno.env.toObject();
  const platform = await stack.startPlatform({
    port,
    ...apiKeys,
    signingKey: await signingKey(),
    issuer: `http://127.0.0.1:${port}/auth/v1`,
    openai: !env.OPENAI_API_KEY,
    env: { AI_AGENT_REDIS_URL: stack.redis.url, AI_AGENT_TRUSTED_PROXY_HOPS: "1", ...env },
  });
  stack.defer(() => Deno.remove(stateFile).catch(() => {}));
  const alertInterval = alertIntervalSeconds(env.AI_AGENT_ALERT_INTERVAL_SECONDS);
  const alerts = scheduleAlertCycles({
    url: platform.alertsUrl,
    key: platform.secretKey,
    intervalSeconds: alertInterval,
    log: (l) => console.log(`  ${l}`),
  });
  stack.defer(() => alerts.stop());
  await Deno.writeTextFile(
    stateFile,
    JSON.stringify(
      {
        databaseUrl: stack.postgres.url,
        redisUrl: stack.redis.url,
        projectUrl: platform.projectUrl,
        functionUrl: platform.functionUrl,
        secretKey: platform.secretKey,
        publishableKey: platform.publishableKey,
        pid: Deno.pid,
      },
      null,
      2,
    ),
  );
  console.log(banner(stack, platform, alertInterval));
}

/** Which OpenAI URL the function calls, and its fallbacks: the stand-in's failure markers work on it. */
function openaiLine(config: Config, standIn: boolean): string {
  const url = config.openai.baseURL ?? DEFAULT_OPENAI_BASE_URL;
  const what = standIn
    ? `${url}  (the stand-in; markers [[fail:500]] [[fail:429]] [[hang]] [[cut-after:2]] in a message rehearse failures; set OPENAI_API_KEY for the real API)`
    : `${url}  (OPENAI_API_KEY is set)`;
  const fallbacks = config.fallbacks.map((f) => `\n  fallback      ${f.model} at ${f.baseURL}`);
  return `${config.model} at ${what}${fallbacks.join("")}`;
}

function banner(stack: LocalStack, platform: Platform, alertInterval: number): string {
  const { config, openai, projectUrl, publishableKey } = platform;
  const model = openaiLine(config, openai !== undefined);
  return `
agent-chat local stack is up
  project URL   ${projectUrl}
  anon key      ${publishableKey}   (publishable: for apps)
  service key   ${platform.secretKey}   (secret: server-side callers only)
  functions     ${platform.functionUrl}
                ${platform.alertsUrl}   (called every ${alertInterval} s)
  postgres      ${stack.postgres.url}   (data in ${localDir}/postgres)
  redis         ${stack.redis.url}
  session store ${config.sessionStore}    transport ${config.database.transport}
  openai        ${model}
The keys and the postgres port stay the same across restarts (${settingsFile}).

From an app (supabase-js v2; README "Calling from an app"):
  const supabase = createClient("${projectUrl}", "${publishableKey}")
  // once a user is signed in:
  const { data, error } = await supabase.functions.invoke("agent-chat", { body: { message: "Hello", org_id } })

Mint a user token (also makes the user a member of the org):
  deno task token --user <uuid> --org <uuid>      (or npm run token -- --user <uuid> --org <uuid>)
Then:
  curl -s ${platform.functionUrl} -H "authorization: Bearer $TOKEN" \\
    -H 'content-type: application/json' -d '{"message":"Hello","org_id":"<org uuid>"}'
Ctrl-C stops everything (the database files stay in ${localDir}/).`;
}

await runCommand(main);
