/**
 * What every reliability scenario shares: the local stack (PostgreSQL and a
 * durable Redis that scenarios stop and restart), the stand-ins process
 * (OpenAI scriptable), 150 members of 10 orgs with tokens, agent-chat as
 * its own process twice per store (a tight user limit for the load test,
 * room to spare for the rest) plus a guard process (short refusal interval
 * and body timeout, a service key) for the hostile-input, flood and
 * slow-body checks, and the record of checks.
 */
import postgres from "postgres";
import { createAuthStandIn, newSigningKey } from "../../supabase/tests/stand-ins/auth.ts";
import {
  functionProcess,
  type LocalStack,
  type Service,
  standInsProcess,
} from "../../supabase/tests/support/local-stack.ts";
import type { AuthStandIn } from "../../supabase/tests/stand-ins/auth.ts";

export type Store = "supabase" | "redis";
export const STORES: readonly Store[] = ["supabase", "redis"];
export const DOCUMENTED = new Set([200, 400, 401, 403, 404, 405, 429, 502, 503]);

export interface Profile {
  name: "ci" | "full";
  loadRequests: number;
  concurrency: number;
  userLimit: number;
  /** How long traffic runs before an outage and during it. */
  outageMs: number;
  upstreamRounds: number;
  /** Anonymous requests per flood (one address, then many addresses). */
  floodRequests: number;
  /** A signed-in user's refused requests (forbidden org and bad body, half each). */
  signedInRefusals: number;
  /** Connections per slow-body case. */
  slowBodies: number;
}

/**
 * The guard process's settings: refusal rows flush every 2 s (so a check can
 * count them all), a body must arrive within 1 s, the documented IP refusal
 * limit, and a user limit small enough that refused requests reach it.
 */
export const GUARD = {
  refusalIntervalSeconds: 2,
  bodyTimeoutMs: 1000,
  ipRefusalLimit: 30,
  userLimit: 20,
} as const;

export const PROFILES: Record<Profile["name"], Profile> = {
  ci: {
    name: "ci",
    loadRequests: 600,
    concurrency: 64,
    userLimit: 12,
    outageMs: 800,
    upstreamRounds: 2,
    floodRequests: 5000,
    signedInRefusals: 400,
    slowBodies: 4,
  },
  full: {
    name: "full",
    loadRequests: 2000,
    concurrency: 64,
    userLimit: 12,
    outageMs: 1500,
    upstreamRounds: 5,
    floodRequests: 10_000,
    signedInRefusals: 2000,
    slowBodies: 12,
  },
};

export interface Member {
  org: string;
  user: string;
  token: string;
}

export interface ReliabilityContext {
  profile: Profile;
  stack: LocalStack;
  sql: postgres.Sql;
  auth: AuthStandIn;
  members: Member[];
  /** A member spread over the orgs, for the i-th request of a scenario. */
  fresh(i: number): Member;
  /** agent-chat with the profile's user limit, per store. */
  tight: Record<Store, Service>;
  /** agent-chat with room to spare, per store. */
  roomy: Record<Store, Service>;
  /** agent-chat (Supabase store) with the GUARD settings and `serviceKey`; quiet log. */
  guard: Service;
  /** A secret API key the guard process accepts for service mode. */
  serviceKey: string;
  /** The environment of an agent-chat process for `store` with `userLimit` (to spawn another). */
  functionEnv(store: Store, userLimit: number): Record<string, string>;
  /** Model calls the OpenAI stand-in has answered so far. */
  openaiCalls(): Promise<number>;
  /** Postgres's clock, to select what a check wrote. */
  dbNow(): Promise<Date>;
  /** Scripts the OpenAI stand-in's next answers. */
  scriptOpenAI(...behaviours: unknown[]): Promise<string>;
  record(area: string, check: string, tried: number, held: number, note?: string): void;
  checks: Check[];
  log(line: string): void;
}

export async function createContext(
  stack: LocalStack,
  profile: Profile,
): Promise<ReliabilityContext> {
  const { postgres: pg, redis } = stack;
  const log = (s: string) => console.error(`[reliability] ${s}`);
  const sql = postgres(pg.url, { max: 4, onnotice: () => {} });
  stack.defer(() => sql.end({ timeout: 1 }));
  const signingKey = await newSigningKey();
  const auth = await createAuthStandIn({ signingKey });
  const standIns = await stack.spawn(standInsProcess, {
    AGENT_CHAT_SIGNING_KEY: JSON.stringify(signingKey),
  });
  const env = (store: Store, userLimit: number) => ({
    SUPABASE_URL: standIns.url,
    SUPABASE_JWKS_URL: `${standIns.url}/auth/v1/.well-known/jwks.json`,
    SUPABASE_JWT_ISSUER: auth.issuer,
    AI_AGENT_DATABASE_URL: pg.url,
    AI_AGENT_SESSION_STORE: store,
    AI_AGENT_REDIS_URL: redis.url,
    AI_AGENT_RATE_LIMIT_MAX_REQUESTS: "100000",
    AI_AGENT_RATE_LIMIT_USER_MAX_REQUESTS: String(userLimit),
    AI_AGENT_RATE_LIMIT_WINDOW_SECONDS: "3600",
    AI_AGENT_SESSION_MAX_MESSAGES: "1000",
    AI_AGENT_TRUSTED_PROXY_HOPS: "1",
    AI_AGENT_OPENAI_TIMEOUT_MS: "1500",
    AI_AGENT_OPENAI_MAX_RETRIES: "0",
    OPENAI_API_KEY: "sk-reliability",
    OPENAI_BASE_URL: `${standIns.url}/v1`,
  });

  // Members: 10 orgs x 15 users; tokens for each.
  const members: Member[] = [];
  for (let o = 0; o < 10; o++) {
    const org = crypto.randomUUID();
    for (let u = 0; u < 15; u++) {
      const user = crypto.randomUUID();
      members.push({
        org,
        user,
        token: await auth.userToken(user, { expiresInSeconds: 3 * 3600 }),
      });
    }
  }
  await sql`insert into auth.users ${sql(members.map((m) => ({ id: m.user })))}`;
  await sql`insert into public.org_memberships ${
    sql(members.map((m) => ({ org_id: m.org, user_id: m.user })))
  }`;

  const tight = {} as Record<Store, Service>;
  const roomy = {} as Record<Store, Service>;
  for (const store of STORES) {
    tight[store] = await stack.spawn(functionProcess, env(store, profile.userLimit));
    roomy[store] = await stack.spawn(functionProcess, env(store, 100_000));
  }
  const serviceKey = `sb_secret_${crypto.randomUUID().replaceAll("-", "")}`;
  const guard = await stack.spawn(functionProcess, {
    ...env("supabase", GUARD.userLimit),
    SUPABASE_SECRET_KEYS: serviceKey,
    AI_AGENT_REFUSAL_LOG_INTERVAL_SECONDS: String(GUARD.refusalIntervalSeconds),
    AI_AGENT_BODY_TIMEOUT_MS: String(GUARD.bodyTimeoutMs),
    AI_AGENT_IP_REFUSAL_LIMIT: String(GUARD.ipRefusalLimit),
    // Floods would print one warn line per refused request.
    AGENT_CHAT_LOG_LEVEL: "error",
  });
  const checks: Check[] = [];
  return {
    profile,
    stack,
    sql,
    auth,
    members,
    fresh: (i) => members[(i * 31) % members.length]!,
    tight,
    roomy,
    guard,
    serviceKey,
    functionEnv: env,
    openaiCalls: async () =>
      ((await (await fetch(`${standIns.url}/requests`)).json()) as { openai: number }).openai,
    dbNow: async () => (await sql`select now() as now`)[0]!.now as Date,
    scriptOpenAI: (...b) =>
      fetch(`${standIns.url}/script`, { method: "POST", body: JSON.stringify(b) }).then((r) =>
        r.text()
      ),
    checks,
    log,
    record(area, check, tried, held, note = "") {
      checks.push({ area, check, tried, held, note });
      log(`${held === tried ? "ok  " : "FAIL"} ${area}: ${check} (${held}/${tried}) ${note}`);
    },
  };
}

export interface Check {
  area: string;
  check: string;
  tried: number;
  held: number;
  note: string;
}

export async function pool<T>(
  items: T[],
  concurrency: number,
  fn: (item: T, i: number) => Promise<void>,
) {
  let next = 0;
  await Promise.all(Array.from({ length: Math.min(concurrency, items.length) }, async () => {
    while (next < items.length) {
      const i = next++;
      await fn(items[i]!, i);
    }
  }));
}

export interface Sent {
  startedAt: number;
  status: number;
  ms: number;
  requestId: string;
  body: Record<string, unknown> | null;
  text: string;
}

export async function send(
  url: string,
  body: unknown,
  headers: Record<string, string>,
  timeoutMs = 20_000,
): Promise<Sent> {
  const requestId = headers["x-request-id"] ?? `rel-${crypto.randomUUID()}`;
  const started = performance.now();
  try {
    const res = await fetch(url, {
      method: "POST",
      headers: { "content-type": "application/json", "x-request-id": requestId, ...headers },
      body: typeof body === "string" ? body : JSON.stringify(body),
      signal: AbortSignal.timeout(timeoutMs),
    });
    const text = await res.text();
    let parsed: Record<string, unknown> | null = null;
    try {
      parsed = JSON.parse(text);
    } catch { /* SSE or empty */ }
    return {
      startedAt: started,
      status: res.status,
      ms: performance.now() - started,
      requestId,
      body: parsed,
      text,
    };
  } catch (error) {
    return {
      startedAt: started,
      status: 0,
      ms: performance.now() - started,
      requestId,
      body: null,
      text: String(error),
    };
  }
}

/** Polls `read` until `done` holds or `ms` pass; the last value read. */
export async function settle<T>(
  read: () => Promise<T>,
  done: (value: T) => boolean,
  ms: number,
): Promise<T> {
  const deadline = performance.now() + ms;
  while (true) {
    const value = await read();
    if (done(value) || performance.now() > deadline) return value;
    await new Promise((r) => setTimeout(r, 250));
  }
}

/**
 * Refusal-ledger intervals a phase of `ms` can touch: each interval lasts at
 * least its length (it ends by its timer or by the first refusal after it),
 * so at most ceil(ms / interval) + 1 of them overlap the phase.
 */
export function intervalsSpanned(ms: number, intervalSeconds: number): number {
  return Math.ceil(ms / (intervalSeconds * 1000)) + 1;
}

/** Rows and requests (sum of event_count) of the usage rows a filter selects. */
export interface Counted {
  rows: number;
  requests: number;
}
