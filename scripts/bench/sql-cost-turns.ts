/**
 * The turns the sql-cost scenario (sql-cost.ts) drives: the seeded ids, the
 * begin- and finish-turn arguments of an answered turn, and the CPU a run of
 * them costs the backend serving the calls (/proc/<pid>/schedstat), every
 * Postgres process, and pg_stat_statements' execution time per call. Calls
 * go through the function's own direct transport (createPostgresDatabase),
 * so the call text is the one agent-chat sends. Also the seeded members and
 * policies the turns run as.
 */
import postgres from "postgres";
import { createPostgresDatabase } from "../../supabase/functions/agent-chat/database.ts";
import type {
  BeginTurnArgs,
  EndTurnArgs,
  UsageEvent,
} from "../../supabase/functions/agent-chat/turn.ts";
import { cpuMs, postgresPids } from "./processes.ts";

// Users are 00000000-0000-4000-<group>-000000<100000 + i>: the last six
// digits are a pgbench variable, so its scripts name the seeded rows.
const id = (group: string, i: number) => `00000000-0000-4000-${group}-000000${100000 + i}`;
export const HOT_ORG = id("8000", 0);
export const POLICY_ORG = id("8000", 1);
export const MEMBERS = 1000;
export const hotUser = (i: number) => id("9000", i);
export const policyUser = (i: number) => id("c000", i);
export const manyOrg = (i: number) => id("b000", i);
export const manyUser = (i: number) => id("a000", i);

/** Org, user and channel of a call. */
export type Caller = [string, string, string];

const LIMITS = { org: 1_000_000_000, user: 1_000_000_000, ip: 1_000_000_000, window: 60 };
const MODEL = "gpt-4.1-mini";

export function beginArgs(
  [org, user, channel]: Caller,
  session: string,
  isNew: boolean,
  n: number,
) {
  return {
    p_org_id: org,
    p_user_id: user,
    p_client_ip: `10.1.${n % 200}.${n % 250}`,
    p_channel: channel,
    p_session_id: session,
    p_load_history: !isNew,
    p_session_owned: true,
    p_org_limit: LIMITS.org,
    p_user_limit: LIMITS.user,
    p_ip_limit: LIMITS.ip,
    p_window_seconds: LIMITS.window,
    p_max_messages: 20,
    p_request_id: crypto.randomUUID(),
    p_reserve_tokens: 1200,
    p_model: MODEL,
    p_reserve_seconds: 300,
    p_prompt_copies: 1,
  } satisfies BeginTurnArgs;
}

function finishArgs(b: BeginTurnArgs): [EndTurnArgs, UsageEvent] {
  const end: EndTurnArgs = {
    p_session_id: b.p_session_id!,
    p_org_id: b.p_org_id,
    p_user_id: b.p_user_id,
    p_channel: b.p_channel,
    p_user_message: "How much is left in our group's savings pot this month?",
    p_assistant_message:
      "Your group has saved 1,250 so far this month; three members have not paid in yet.",
    p_ttl_seconds: 86400,
    p_max_messages: 20,
  };
  const usage: UsageEvent = {
    request_id: b.p_request_id!,
    org_id: b.p_org_id,
    user_id: b.p_user_id,
    session_id: b.p_session_id,
    channel: b.p_channel,
    model: MODEL,
    prompt_tokens: 180,
    cached_prompt_tokens: null,
    completion_tokens: 42,
    total_tokens: 222,
    latency_ms: 850,
    success: true,
    error_code: null,
    error_message: null,
    event_count: 1,
    metadata: { store: "supabase", stream: false, client_ip: b.p_client_ip },
  };
  return [end, usage];
}

/** CPU time a process has used, in microseconds (schedstat: nanoseconds). */
async function cpuMicros(pid: number): Promise<number> {
  const text = await Deno.readTextFile(`/proc/${pid}/schedstat`);
  return Number(text.split(" ")[0]) / 1000;
}

async function clusterCpuMs(dataDir: string): Promise<number> {
  let total = 0;
  for (const pid of await postgresPids(dataDir)) total += await cpuMs(pid);
  return total;
}

export interface TurnCost {
  beginUs: number;
  finishUs: number;
  clusterUsPerTurn: number;
}

/**
 * `turns` answered turns through the direct transport on one connection;
 * backend CPU per begin and per finish call, and every Postgres process'
 * CPU per turn.
 */
export async function turnCost(
  url: string,
  dataDir: string,
  users: (i: number) => Caller,
  turns: number,
  options: { track?: boolean } = {},
): Promise<TurnCost> {
  const conn = postgres(url, {
    max: 1,
    prepare: false,
    onnotice: () => {},
    connection: { "pg_stat_statements.track": options.track ? "all" : "none" },
  });
  const db = createPostgresDatabase(() => conn, 10_000);
  try {
    const [{ pid }] = await conn.unsafe("select pg_backend_pid() as pid") as unknown as [
      { pid: number },
    ];
    let session = "";
    const turn = async (n: number, timed: boolean) => {
      if (n % 5 === 0) session = crypto.randomUUID();
      const b = beginArgs(users(Math.floor(n / 5)), session, n % 5 === 0, n); // a session keeps its owner
      const t0 = timed ? await cpuMicros(pid) : 0;
      const begun = await db.beginTurn(b);
      if (begun.outcome !== "ok") throw new Error(`begin turn: ${JSON.stringify(begun)}`);
      const t1 = timed ? await cpuMicros(pid) : 0;
      const [end, usage] = finishArgs(b);
      const finished = await db.finishTurn(end, usage);
      if (finished.outcome !== "ok" || !finished.usage_logged) {
        throw new Error(`finish turn: ${JSON.stringify(finished)}`);
      }
      const t2 = timed ? await cpuMicros(pid) : 0;
      return [t1 - t0, t2 - t1];
    };
    for (let n = 0; n < 200; n++) await turn(n, false); // plans cached, pages warm
    if (options.track) await conn`select pg_stat_statements_reset()`;
    let begin = 0;
    let finish = 0;
    const cluster0 = await clusterCpuMs(dataDir);
    for (let n = 0; n < turns; n++) {
      const [b, f] = await turn(n, true);
      begin += b!;
      finish += f!;
    }
    const cluster = await clusterCpuMs(dataDir) - cluster0;
    return {
      beginUs: begin / turns,
      finishUs: finish / turns,
      clusterUsPerTurn: cluster * 1000 / turns,
    };
  } finally {
    await db.close();
  }
}

/** pg_stat_statements' execution time per top-level call of each turn function (ms). */
export async function statementTimes(url: string) {
  const sql = postgres(url, { max: 1, onnotice: () => {} });
  try {
    const rows = await sql`
      select case when query like '%agent_begin_turn%' then 'begin' else 'finish' end as fn,
             sum(total_exec_time) / sum(calls) as ms
      from pg_stat_statements
      where toplevel and (query like '%agent_begin_turn%' or query like '%agent_finish_turn%')
        and query not like '%pg_stat_statements%'
      group by 1`;
    const of = (fn: string) => Number(rows.find((r) => r.fn === fn)?.ms ?? NaN) * 1000;
    return { beginUs: of("begin"), finishUs: of("finish") };
  } finally {
    await sql.end();
  }
}

/** The exact text the direct transport sends for a begin-turn call. */
export async function beginCallText(args: BeginTurnArgs): Promise<string> {
  let text = "";
  const capture = {
    unsafe: (t: string) => {
      text = t;
      return Promise.resolve([{ result: {} }]);
    },
    end: () => Promise.resolve(),
  } as unknown as postgres.Sql;
  await createPostgresDatabase(() => capture, 1000).beginTurn(args);
  return text;
}

/** Users are 00000000-0000-4000-<group>-000000<100000 + i>: one hot org, one policy org, 1,000 one-member orgs. */
export async function seedMembers(sql: postgres.Sql) {
  const seed = async (org: string | null, group: string, orgGroup?: string) => {
    await sql`insert into auth.users (id)
              select ('00000000-0000-4000-' || ${group} || '-000000' || (100000 + i))::uuid
              from generate_series(0, ${MEMBERS - 1}) i`;
    await sql`insert into public.org_memberships (org_id, user_id)
              select coalesce(${org}::uuid, ('00000000-0000-4000-' || ${
      orgGroup ?? ""
    } || '-000000' || (100000 + i))::uuid),
                     ('00000000-0000-4000-' || ${group} || '-000000' || (100000 + i))::uuid
              from generate_series(0, ${MEMBERS - 1}) i`;
  };
  await seed(HOT_ORG, "9000");
  await seed(POLICY_ORG, "c000");
  await seed(null, "a000", "b000");
}

/**
 * (b): a tenant policy, a channel limit for everyone and one for the tenant,
 * org and user token quotas (all far above what the run uses). The channel
 * rows are for whatsapp, the channel of (b) only: (a) calls on app, where no
 * policy row applies.
 */
export async function seedPolicies(sql: postgres.Sql) {
  await sql`select ops.policy_set(${POLICY_ORG}::uuid, null, ${
    sql.json({
      org_max_requests: 900_000_000,
      user_max_requests: 900_000_000,
      ip_max_requests: 900_000_000,
      org_tokens_per_minute: 2_000_000_000,
      org_tokens_per_day: 2_000_000_000,
      user_tokens_per_minute: 2_000_000_000,
      user_tokens_per_day: 2_000_000_000,
    })
  }, 'sql-cost')`;
  const channel = sql.json({ channel_max_requests: 900_000_000 });
  await sql`select ops.policy_set(null, 'whatsapp', ${channel}, 'sql-cost')`;
  await sql`select ops.policy_set(${POLICY_ORG}::uuid, 'whatsapp', ${channel}, 'sql-cost')`;
}
