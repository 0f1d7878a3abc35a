/**
 * agent-chat as its own process (as index.ts wires it, signals and all),
 * beside the stand-ins process (Auth JWKS, OpenAI), on the test run's
 * database: for what only a process shows (a clean stop, DENO_CERT).
 */
import postgres from "postgres";
import { type AuthStandIn, createAuthStandIn, newSigningKey } from "../stand-ins/auth.ts";
import { functionProcess, type Service, spawnService, standInsProcess } from "./local-stack.ts";
import { testUrls } from "./function-harness.ts";

export interface ProcessHarness {
  sql: postgres.Sql;
  auth: AuthStandIn;
  standIns: Service;
  /** Starts agent-chat with the base environment plus `env`; stopped with the harness. */
  start(env: Record<string, string>, denoFlags?: string[]): Promise<Service>;
  /** A new member of a new org, with a user token. */
  member(): Promise<{ org: string; user: string; token: string }>;
  /** Scripts the OpenAI stand-in's next answers. */
  script(...behaviours: unknown[]): Promise<void>;
}

export async function withProcesses(fn: (p: ProcessHarness) => Promise<void>): Promise<void> {
  const { databaseUrl } = testUrls();
  const sql = postgres(databaseUrl, { max: 2, onnotice: () => {} });
  const signingKey = await newSigningKey();
  const auth = await createAuthStandIn({ signingKey });
  const services: Service[] = [];
  try {
    const standIns = await spawnService(standInsProcess, {
      AGENT_CHAT_SIGNING_KEY: JSON.stringify(signingKey),
    });
    services.push(standIns);
    const base = {
      SUPABASE_URL: standIns.url,
      SUPABASE_JWKS_URL: `${standIns.url}/auth/v1/.well-known/jwks.json`,
      SUPABASE_JWT_ISSUER: auth.issuer,
      AI_AGENT_DATABASE_URL: databaseUrl,
      AI_AGENT_TRUSTED_PROXY_HOPS: "1",
      AI_AGENT_RATE_LIMIT_MAX_REQUESTS: "1000",
      OPENAI_API_KEY: "sk-process",
      OPENAI_BASE_URL: `${standIns.url}/v1`,
      AGENT_CHAT_LOG_LEVEL: "error",
    };
    await fn({
      sql,
      auth,
      standIns,
      async start(env, denoFlags) {
        const service = await spawnService(functionProcess, { ...base, ...env }, { denoFlags });
        services.push(service);
        return service;
      },
      async member() {
        const org = crypto.randomUUID();
        const user = crypto.randomUUID();
        await sql`insert into auth.users (id) values (${user})`;
        await sql`insert into public.org_memberships (org_id, user_id) values (${org}, ${user})`;
        return { org, user, token: await auth.userToken(user) };
      },
      async script(...behaviours) {
        await fetch(`${standIns.url}/script`, { method: "POST", body: JSON.stringify(behaviours) })
          .then((r) => r.body?.cancel());
      },
    });
  } finally {
    for (const s of services.reverse()) await s.stop();
    await sql.end({ timeout: 1 });
  }
}
