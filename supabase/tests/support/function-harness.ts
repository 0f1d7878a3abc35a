/**
 * Everything an end-to-end test of agent-chat needs, over real connections:
 * the local stack's platform (gateway with the Auth and PostgREST stand-ins,
 * the OpenAI stand-in, optionally the Upstash stand-in in front of the real
 * Redis, and the function built as index.ts builds it) in front of the test
 * run's database.
 */
import postgres from "postgres";
import type { AuthStandIn } from "../stand-ins/auth.ts";
import type { Gateway } from "../stand-ins/gateway.ts";
import type { OpenAIStandIn } from "../stand-ins/openai.ts";
import type { UpstashStandIn } from "../stand-ins/upstash.ts";
import type { AgentChatDeps } from "../../functions/agent-chat/handler.ts";
import type { Logger } from "../../functions/_shared/log.ts";
import { startPlatform } from "./local-stack.ts";

export interface HarnessOptions {
  store?: "supabase" | "redis";
  transport?: "rpc" | "postgres";
  /** For the redis store: TCP to redis-server, or REST through the Upstash stand-in. */
  redisVia?: "tcp" | "upstash";
  env?: Record<string, string>;
  /** Swap one dependency (a failing transport, say) after they are built. */
  adjust?: (deps: AgentChatDeps) => void;
  /** The circuit breakers' clock (milliseconds), for tests that move time. */
  now?: () => number;
}

export interface Member {
  orgId: string;
  userId: string;
  token: string;
  /** The address the member calls from (the gateway's X-Forwarded-For chain). */
  ip: string;
}

export interface Harness {
  url: string;
  gateway: Gateway;
  auth: AuthStandIn;
  openai: OpenAIStandIn;
  upstash: UpstashStandIn | undefined;
  sql: postgres.Sql;
  redisUrl: string;
  secretKey: string;
  logs: Array<{ level: string; event: string; fields: Record<string, unknown> }>;
  member(orgId?: string): Promise<Member>;
  /** POSTs to the function as `member` (token and forwarded address) unless options override. */
  call(
    body: unknown,
    options?: { token?: string; ip?: string; headers?: Record<string, string> },
  ): Promise<Response>;
  usageRows(requestId: string): Promise<Array<Record<string, unknown>>>;
  stop(): Promise<void>;
}

const rnd = () => Math.floor(Math.random() * 250) + 1;

export function testUrls(): { databaseUrl: string; redisUrl: string } {
  const databaseUrl = Deno.env.get("AGENT_CHAT_TEST_DATABASE_URL");
  const redisUrl = Deno.env.get("AGENT_CHAT_TEST_REDIS_URL");
  if (!databaseUrl || !redisUrl) {
    throw new Error(
      "AGENT_CHAT_TEST_DATABASE_URL and AGENT_CHAT_TEST_REDIS_URL are unset: run the tests with `deno task test`",
    );
  }
  return { databaseUrl, redisUrl };
}

export async function startHarness(options: HarnessOptions = {}): Promise<Harness> {
  const { databaseUrl, redisUrl } = testUrls();
  const store = options.store ?? "supabase";
  const logs: Harness["logs"] = [];
  const log: Logger = (level, event, fields) => logs.push({ level, event, fields });
  const platform = await startPlatform({
    databaseUrl,
    ...(store === "redis" && options.redisVia === "upstash" ? { upstashFor: redisUrl } : {}),
    env: {
      AI_AGENT_SESSION_STORE: store,
      AI_AGENT_RATE_LIMIT_MAX_REQUESTS: "1000",
      // A CDN in front of the gateway: the client is the second entry from the right.
      AI_AGENT_TRUSTED_PROXY_HOPS: "2",
      OPENAI_API_KEY: "sk-test",
      AI_AGENT_OPENAI_TIMEOUT_MS: "3000",
      AI_AGENT_OPENAI_MAX_RETRIES: "0",
      ...(options.transport === "postgres" ? { AI_AGENT_DATABASE_URL: databaseUrl } : {}),
      ...(store === "redis" && options.redisVia !== "upstash"
        ? { AI_AGENT_REDIS_URL: redisUrl }
        : {}),
      ...options.env,
    },
    log,
    extendLifetime: undefined,
    ...(options.adjust ? { adjust: options.adjust } : {}),
    ...(options.now ? { now: options.now } : {}),
  });
  const { gateway, auth, upstash, secretKey } = platform;
  const openai = platform.openai!;
  const sql = postgres(databaseUrl, { max: 4, onnotice: () => {} });

  return {
    url: gateway.functionUrl,
    gateway,
    auth,
    openai,
    upstash,
    sql,
    redisUrl,
    secretKey,
    logs,
    async member(orgId = crypto.randomUUID()) {
      const userId = crypto.randomUUID();
      await sql`insert into auth.users (id, email) values (${userId}, ${userId + "@example.test"})`;
      await sql`insert into public.org_memberships (org_id, user_id, role) values (${orgId}, ${userId}, 'member')`;
      const ip = `10.${rnd()}.${rnd()}.${rnd()}`;
      return { orgId, userId, token: await auth.userToken(userId), ip };
    },
    call(body, o = {}) {
      return fetch(gateway.functionUrl, {
        method: "POST",
        headers: {
          "content-type": "application/json",
          ...(o.token ? { authorization: `Bearer ${o.token}` } : {}),
          "x-forwarded-for": o.ip ?? `10.${rnd()}.${rnd()}.${rnd()}`,
          ...o.headers,
        },
        body: typeof body === "string" ? body : JSON.stringify(body),
      });
    },
    async usageRows(requestId) {
      return await sql`select * from public.agent_usage_events where request_id = ${requestId} order by id`;
    },
    async stop() {
      await platform.stop();
      await sql.end({ timeout: 1 });
    },
  };
}
