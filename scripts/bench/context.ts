/**
 * What every benchmark scenario shares: the local stack (PostgreSQL with
 * durable settings, Redis), the stand-ins process (OpenAI, Auth JWKS, and
 * the PostgREST stand-in for the rpc transport), seeded members with
 * tokens, the function's environment per transport and store, and the load
 * tools (pgbench, wrk) run as children that a Ctrl-C stops too.
 */
import postgres from "postgres";
import { createAuthStandIn, newSigningKey } from "../../supabase/tests/stand-ins/auth.ts";
import {
  type LocalStack,
  type Service,
  standInsProcess,
} from "../../supabase/tests/support/local-stack.ts";
import { findPostgresTools } from "../../supabase/tests/support/tools.ts";
import { cpuMs, postgresPids } from "./processes.ts";

export type Store = "supabase" | "redis";
/** direct: postgres.js to AI_AGENT_DATABASE_URL; rpc: PostgREST (here its stand-in). */
export type Transport = "direct" | "rpc";

export interface BenchProfile {
  name: "quick" | "full";
  /** Length of each measured load run. */
  seconds: number;
  /** Unloaded (concurrency 1) runs per server; the median is reported. */
  unloadedRuns: number;
  growthSamples: number;
  /** Requests served before each memory reading. */
  memoryCheckpoints: number[];
}

export const PROFILES: Record<BenchProfile["name"], BenchProfile> = {
  quick: {
    name: "quick",
    seconds: 2,
    unloadedRuns: 1,
    growthSamples: 3,
    memoryCheckpoints: [2_500, 5_000, 7_500, 10_000],
  },
  full: {
    name: "full",
    seconds: 5,
    unloadedRuns: 3,
    growthSamples: 15,
    memoryCheckpoints: [10_000, 20_000, 30_000, 40_000],
  },
};

export const HOT_ORG = "00000000-0000-4000-8000-000000000001";
export const hotUser = (i: number) => `00000000-0000-4000-9000-${String(i).padStart(12, "0")}`;
export const manyUser = (i: number) => `00000000-0000-4000-a000-${String(i).padStart(12, "0")}`;
export const manyOrg = (i: number) => `00000000-0000-4000-b000-${String(i).padStart(12, "0")}`;

export interface WrkResult {
  rps: number;
  p50: number;
  p95: number;
  p99: number;
  requests: number;
  /** Socket errors and non-2xx answers. */
  failures: number;
}

export interface Target {
  target: string;
  measured: string;
  met: boolean;
}

export interface ScenarioResult {
  /** Marked regions of docs/benchmarks.md this scenario fills. */
  sections: Record<string, string>;
  targets: Target[];
}

export interface BenchContext {
  profile: BenchProfile;
  stack: LocalStack;
  sql: postgres.Sql;
  /** PostgreSQL's programs (pgbench, psql). */
  pgBin: string;
  work: string;
  standIns: Service;
  /** The service-role key the PostgREST stand-in accepts (rpc transport). */
  secretKey: string;
  /** Lines "<token> <org>" for wrk: 200 users in 20 orgs. */
  usersFile: string;
  tokenOf(i: number): string;
  functionEnv(store: Store, transport: Transport): Record<string, string>;
  run(cmd: string, args: string[], env?: Record<string, string>): Promise<string>;
  pgbench(
    clients: number,
    script: string,
    extra?: string[],
    env?: Record<string, string>,
  ): Promise<string>;
  wrk(url: string, clients: number, seconds: number): Promise<WrkResult>;
  post(
    url: string,
    token: string,
    body: unknown,
  ): Promise<{ status: number; ms: number; json: Record<string, unknown> }>;
  /** CPU milliseconds used so far by every process of the stack's PostgreSQL cluster. */
  postgresCpuMs(): Promise<number>;
  cpuMs(pid: number): Promise<number>;
  log(line: string): void;
}

const wrkScript = new URL("./wrk-chat.lua", import.meta.url).pathname;

export async function createContext(
  stack: LocalStack,
  profile: BenchProfile,
): Promise<BenchContext> {
  const log = (s: string) => console.error(`[bench] ${s}`);
  const { postgres: pg, redis } = stack;
  const work = await Deno.makeTempDir({ prefix: "agent-chat-bench-" });
  stack.defer(() => Deno.remove(work, { recursive: true }));
  const sql = postgres(pg.url, { max: 4, onnotice: () => {} });
  stack.defer(() => sql.end({ timeout: 1 }));
  const tools = await findPostgresTools();

  // Load generators are children of this process: stopped with the stack.
  const children = new Set<Deno.ChildProcess>();
  stack.defer(() => {
    for (const child of children) {
      try {
        child.kill("SIGKILL");
      } catch { /* gone */ }
    }
  });
  async function run(cmd: string, args: string[], env: Record<string, string> = {}) {
    const child = new Deno.Command(cmd, { args, env, stdout: "piped", stderr: "piped" }).spawn();
    children.add(child);
    try {
      const r = await child.output();
      const text = new TextDecoder().decode(r.stdout) + new TextDecoder().decode(r.stderr);
      if (!r.success) throw new Error(`${cmd} failed:\n${text}`);
      return text;
    } finally {
      children.delete(child);
    }
  }

  await seedMembers(sql);

  const signingKey = await newSigningKey();
  const auth = await createAuthStandIn({ signingKey });
  const secretKey = `sb_secret_bench_${crypto.randomUUID().replaceAll("-", "")}`;
  const standIns = await stack.spawn(standInsProcess, {
    AGENT_CHAT_SIGNING_KEY: JSON.stringify(signingKey),
    AGENT_CHAT_DATABASE_URL: pg.url,
    AGENT_CHAT_SECRET_KEY: secretKey,
  });
  const { tokens, usersFile } = await wrkUsers(auth, work);

  return {
    profile,
    stack,
    sql,
    pgBin: tools.bin,
    work,
    standIns,
    secretKey,
    usersFile,
    tokenOf: (i) => tokens[i - 1]!,
    functionEnv: (store, transport) => ({
      SUPABASE_URL: standIns.url,
      SUPABASE_SERVICE_ROLE_KEY: secretKey,
      SUPABASE_JWKS_URL: `${standIns.url}/auth/v1/.well-known/jwks.json`,
      SUPABASE_JWT_ISSUER: auth.issuer,
      ...(transport === "direct" ? { AI_AGENT_DATABASE_URL: pg.url } : {}),
      AI_AGENT_SESSION_STORE: store,
      AI_AGENT_REDIS_URL: redis.url,
      AI_AGENT_RATE_LIMIT_MAX_REQUESTS: "1000000",
      AI_AGENT_TRUSTED_PROXY_HOPS: "1",
      OPENAI_API_KEY: "sk-bench",
      OPENAI_BASE_URL: `${standIns.url}/v1`,
    }),
    run,
    pgbench(clients, script, extra = [], env = {}) {
      const u = new URL(pg.url);
      return run(`${tools.bin}/pgbench`, [
        ...["-n", "-h", u.hostname, "-p", u.port, "-U", "postgres"],
        ...["-c", String(clients), "-j", String(Math.min(clients, 2))],
        ...["-T", String(profile.seconds), "-f", script, ...extra, "postgres"],
      ], { PGOPTIONS: "--client-min-messages=warning", ...env });
    },
    async wrk(url, clients, seconds) {
      const out = await run("wrk", [
        ...["-t", String(Math.min(clients, 2)), "-c", String(clients), "-d", `${seconds}s`],
        ...["--timeout", "10s", "-s", wrkScript, url],
      ], { BENCH_USERS: usersFile });
      const json = JSON.parse(/BENCH_JSON (\{.*\})/.exec(out)![1]!);
      return {
        rps: json.requests / (json.duration_us / 1e6),
        p50: json.p50 / 1000,
        p95: json.p95 / 1000,
        p99: json.p99 / 1000,
        requests: json.requests,
        failures: json.socket_errors + json.non2xx,
      };
    },
    async post(url, token, body) {
      const t = performance.now();
      const res = await fetch(url, {
        method: "POST",
        headers: { authorization: `Bearer ${token}`, "content-type": "application/json" },
        body: JSON.stringify(body),
      });
      const json = await res.json();
      return { status: res.status, ms: performance.now() - t, json };
    },
    async postgresCpuMs() {
      let total = 0;
      for (const pid of await postgresPids(pg.dataDir)) total += await cpuMs(pid);
      return total;
    },
    cpuMs,
    log,
  };
}

/**
 * Members: the hot org (1,000 users), 1,000 one-member orgs, and users
 * 1..200 also members of orgs 1..20 for the HTTP runs.
 */
async function seedMembers(sql: postgres.Sql) {
  await sql`insert into auth.users (id) select ('00000000-0000-4000-9000-' || lpad(i::text, 12, '0'))::uuid from generate_series(1, 1000) i`;
  await sql`insert into auth.users (id) select ('00000000-0000-4000-a000-' || lpad(i::text, 12, '0'))::uuid from generate_series(1, 1000) i`;
  await sql`insert into public.org_memberships (org_id, user_id)
            select ${HOT_ORG}::uuid, ('00000000-0000-4000-9000-' || lpad(i::text, 12, '0'))::uuid from generate_series(1, 1000) i`;
  await sql`insert into public.org_memberships (org_id, user_id)
            select ('00000000-0000-4000-b000-' || lpad(i::text, 12, '0'))::uuid, ('00000000-0000-4000-a000-' || lpad(i::text, 12, '0'))::uuid
            from generate_series(1, 1000) i`;
  await sql`insert into public.org_memberships (org_id, user_id)
            select ('00000000-0000-4000-b000-' || lpad((((i - 1) % 20) + 1)::text, 12, '0'))::uuid,
                   ('00000000-0000-4000-a000-' || lpad(i::text, 12, '0'))::uuid
            from generate_series(1, 200) i on conflict do nothing`;
}

/** Tokens of users 1..200, and the wrk users file: lines "<token> <org>". */
async function wrkUsers(
  auth: { userToken(sub: string, o: { expiresInSeconds: number }): Promise<string> },
  work: string,
) {
  const tokens: string[] = [];
  const lines: string[] = [];
  for (let i = 1; i <= 200; i++) {
    const token = await auth.userToken(manyUser(i), { expiresInSeconds: 6 * 3600 });
    tokens.push(token);
    lines.push(`${token} ${manyOrg(((i - 1) % 20) + 1)}`);
  }
  const usersFile = `${work}/users.txt`;
  await Deno.writeTextFile(usersFile, lines.join("\n") + "\n");
  return { tokens, usersFile };
}
