/**
 * `deno task dev` (npm run dev): the local stack in one command.
 *   - PostgreSQL 15 in .local/postgres (kept between runs), migrations applied
 *   - redis-server on a free port (for AI_AGENT_SESSION_STORE=redis)
 *   - the Supabase gateway stand-in on 127.0.0.1:54321 (Auth JWKS, PostgREST
 *     RPC) serving agent-chat at /functions/v1/agent-chat, as `supabase start`
 *     would, so clients point at it unchanged
 *   - the OpenAI stand-in when OPENAI_API_KEY is not set
 * Every AI_AGENT_* / OPENAI_* variable in the environment overrides the defaults;
 * ports: AGENT_CHAT_DEV_PORT (54321), AGENT_CHAT_DEV_DB_PORT, AGENT_CHAT_DEV_REDIS_PORT
 * (free ports by default).
 */
import { startPostgres } from "../supabase/tests/support/postgres.ts";
import { startRedis } from "../supabase/tests/support/redis.ts";
import { migrate } from "../supabase/tests/support/migrate.ts";
import { createAuthStandIn } from "../supabase/tests/support/auth-stand-in.ts";
import { startGateway } from "../supabase/tests/support/gateway.ts";
import { createOpenAIStandIn } from "../supabase/tests/support/openai-stand-in.ts";
import { MissingToolError } from "../supabase/tests/support/tools.ts";
import { loadConfig } from "../supabase/functions/agent-chat/config.ts";
import { buildDependencies } from "../supabase/functions/agent-chat/deps.ts";
import { createAgentChatHandler } from "../supabase/functions/agent-chat/handler.ts";
import { localDir, signingKey, stateFile } from "./local-stack.ts";

const port = Number(Deno.env.get("AGENT_CHAT_DEV_PORT") ?? 54321);
const cleanups: Array<() => Promise<void>> = [];
const shutdown = async (code: number) => {
  for (const fn of cleanups.reverse()) await fn().catch(() => {});
  await Deno.remove(stateFile).catch(() => {});
  Deno.exit(code);
};
Deno.addSignalListener("SIGINT", () => shutdown(0));
Deno.addSignalListener("SIGTERM", () => shutdown(0));

try {
  await Deno.mkdir(localDir, { recursive: true });
  const dbPort = Deno.env.get("AGENT_CHAT_DEV_DB_PORT");
  const redisPort = Deno.env.get("AGENT_CHAT_DEV_REDIS_PORT");
  const pg = await startPostgres({
    dataDir: `${localDir}/postgres`,
    fast: false,
    ...(dbPort ? { port: Number(dbPort) } : {}),
  });
  cleanups.push(() => pg.stop());
  await migrate(pg.url, { pgCron: pg.hasPgCron, log: (l) => console.log(`  ${l}`) });
  const redis = await startRedis(redisPort ? { port: Number(redisPort) } : {});
  cleanups.push(() => redis.stop());

  const secretKey = `sb_secret_local_${crypto.randomUUID().replaceAll("-", "")}`;
  const auth = await createAuthStandIn({
    signingKey: await signingKey(),
    issuer: `http://127.0.0.1:${port}/auth/v1`,
  });
  const gateway = startGateway({ databaseUrl: pg.url, auth, secretKeys: [secretKey], port });
  cleanups.push(() => gateway.stop());
  const env = Deno.env.toObject();
  const openai = env.OPENAI_API_KEY ? undefined : createOpenAIStandIn();
  if (openai) cleanups.push(() => openai.stop());

  const config = loadConfig({
    SUPABASE_URL: gateway.url,
    SUPABASE_SERVICE_ROLE_KEY: secretKey,
    SUPABASE_JWT_SECRET: auth.jwtSecret,
    SUPABASE_JWT_ISSUER: auth.issuer,
    AI_AGENT_REDIS_URL: redis.url,
    AI_AGENT_TRUSTED_PROXY_HOPS: "1",
    ...(openai ? { OPENAI_API_KEY: "sk-local-stand-in", OPENAI_BASE_URL: openai.baseURL } : {}),
    ...env,
  });
  const deps = buildDependencies(config);
  cleanups.push(() => deps.close());
  gateway.setFunction(createAgentChatHandler(deps));

  await Deno.writeTextFile(
    stateFile,
    JSON.stringify(
      {
        databaseUrl: pg.url,
        redisUrl: redis.url,
        functionUrl: gateway.functionUrl,
        secretKey,
        pid: Deno.pid,
      },
      null,
      2,
    ),
  );

  console.log(`
agent-chat local stack is up
  function      ${gateway.functionUrl}
  postgres      ${pg.url}   (data in .local/postgres)
  redis         ${redis.url}
  session store ${config.sessionStore}    transport ${config.database.transport}
  openai        ${
    openai
      ? `stand-in at ${openai.baseURL} (set OPENAI_API_KEY for the real API)`
      : "real API (OPENAI_API_KEY is set)"
  }
  service key   ${secretKey}

Mint a user token (also makes the user a member of the org):
  deno task token -- --user <uuid> --org <uuid>
Then:
  curl -s ${gateway.functionUrl} -H "authorization: Bearer $TOKEN" \\
    -H 'content-type: application/json' -d '{"message":"Hello","org_id":"<org uuid>"}'
Ctrl-C stops everything (the database files stay in .local/).`);
} catch (error) {
  console.error(error instanceof MissingToolError ? `error: ${error.message}` : error);
  await shutdown(1);
}
