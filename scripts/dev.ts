/**
 * `deno task dev` (npm run dev): the local stack in one command, kept
 * running until Ctrl-C. PostgreSQL in .local/postgres (kept between runs,
 * migrated on every start), Redis, the gateway stand-in on 127.0.0.1:54321
 * serving agent-chat at /functions/v1/agent-chat as `supabase start` would,
 * and the OpenAI stand-in unless OPENAI_API_KEY is set. A second start in
 * the same checkout says where the running one is and leaves it alone.
 */
import { parseCommand, runCommand, UsageError } from "./cli.ts";
import { localDir, runningState, signingKey, stateFile } from "./dev-state.ts";
import { type LocalStack, startLocalStack } from "../supabase/tests/support/local-stack.ts";
import { alertIntervalSeconds, scheduleAlertCycles } from "./dev-alerts.ts";

const usage = `usage: deno task dev   (npm run dev)

Starts PostgreSQL, Redis, the platform stand-ins and agent-chat; Ctrl-C stops them.
Every AI_AGENT_* / OPENAI_* variable in the environment overrides the defaults.
  AGENT_CHAT_DEV_PORT        the gateway's port (54321)
  AGENT_CHAT_DEV_DB_PORT     PostgreSQL's port (a free one)
  AGENT_CHAT_DEV_REDIS_PORT  Redis' port (a free one)
  AGENT_CHAT_LOCAL_DIR       where the database and state live (.local)`;

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
  const dbPort = portFrom("AGENT_CHAT_DEV_DB_PORT");
  const redisPort = portFrom("AGENT_CHAT_DEV_REDIS_PORT");
  const stack = await startLocalStack({
    postgres: { dataDir: `${localDir}/postgres`, fast: false, ...(dbPort ? { port: dbPort } : {}) },
    redis: redisPort ? { port: redisPort } : {},
    log: (l) => console.log(`  ${l}`),
    // Ctrl-C is how the dev stack is meant to stop.
    exitOnSignal: 0,
  });
  try {
    await serve(stack, port);
  } catch (error) {
    await stack.stop();
    throw error;
  }
  // Serve until a signal stops the stack (and exits the process).
  await new Promise(() => {});
  return 0;
}

async function serve(stack: LocalStack, port: number) {
  const env = Deno.env.toObject();
  const platform = await stack.startPlatform({
    port,
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
        functionUrl: platform.functionUrl,
        secretKey: platform.secretKey,
        pid: Deno.pid,
      },
      null,
      2,
    ),
  );
  const { config, openai } = platform;
  console.log(`
agent-chat local stack is up
  function      ${platform.functionUrl}
  alerts        ${platform.alertsUrl}   (called every ${alertInterval} s)
  postgres      ${stack.postgres.url}   (data in ${localDir}/postgres)
  redis         ${stack.redis.url}
  session store ${config.sessionStore}    transport ${config.database.transport}
  openai        ${
    openai
      ? `stand-in at ${openai.baseURL} (set OPENAI_API_KEY for the real API)`
      : "real API (OPENAI_API_KEY is set)"
  }
  service key   ${platform.secretKey}

Mint a user token (also makes the user a member of the org):
  deno task token --user <uuid> --org <uuid>
Then:
  curl -s ${platform.functionUrl} -H "authorization: Bearer $TOKEN" \\
    -H 'content-type: application/json' -d '{"message":"Hello","org_id":"<org uuid>"}'
Ctrl-C stops everything (the database files stay in ${localDir}/).`);
}

await runCommand(main);
