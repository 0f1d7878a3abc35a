/**
 * Postgres cost of a chat turn, measured in the database alone:
 *
 *   deno run --allow-all scripts/bench/sql-cost.ts [--turns N] [--rounds R] [--seconds S] [--json]
 *
 * 1. CPU per call. One connection drives answered turns through the
 *    function's own direct transport (createPostgresDatabase: the very call
 *    text agent-chat sends): begin turn, then finish turn with its usage row,
 *    five turns per session. The CPU of the backend serving that connection
 *    is read from /proc/<pid>/schedstat (nanoseconds) around every call, so
 *    parsing and planning the call text count too. Two policy set-ups:
 *    (a) no policy rows, (b) a tenant policy, a channel limit (global and
 *    tenant) and org and user token quotas. Cross-checks: the CPU of every
 *    Postgres process over the same turns (WAL writer included; /proc stat,
 *    10 ms ticks), and pg_stat_statements' total_exec_time per call (track =
 *    all, a separate pass because tracking costs CPU itself; it leaves out
 *    parse and plan time).
 * 2. Calls per second of begin turn (pgbench, simple protocol, the
 *    function's call text) on one hot org and on many orgs, next to a fair
 *    naive reference: one statement (an upsert of one counter row with a
 *    check), asynchronous commit, a generic plan (prepared statement), on
 *    the same hot key, in the same run.
 *
 * Owns its PostgreSQL (durable settings, as production: fsync on) and
 * prints a table (or JSON). Each figure is the median of --rounds rounds.
 */
import postgres from "postgres";
import { commandLine, numberFlag } from "../cli.ts";
import { startPostgres } from "../../supabase/tests/support/postgres.ts";
import { migrate } from "../../supabase/tests/support/migrate.ts";
import { findPostgresTools } from "../../supabase/tests/support/tools.ts";
import {
  type BeginTurnArgs,
  createPostgresDatabase,
  type EndTurnArgs,
  type UsageEvent,
} from "../../supabase/functions/agent-chat/database.ts";
import { cpuMs, postgresPids } from "./processes.ts";
import { fixed, markdownTable, median } from "./stats.ts";

const flags = commandLine({
  usage: `usage: deno run --allow-all scripts/bench/sql-cost.ts [options]

Postgres CPU per begin-turn and finish-turn call, and begin-turn calls/s next to a naive reference.
  --turns N     answered turns per round and policy set-up (default 3000)
  --rounds R    rounds; figures are medians (default 3)
  --seconds S   length of each pgbench run (default 5)
  --json        print the figures as JSON`,
  options: {
    turns: { type: "string" },
    rounds: { type: "string" },
    seconds: { type: "string" },
    json: { type: "boolean" },
  },
}, ({ values }) => ({
  turns: values.turns ? numberFlag(values.turns, "--turns", { min: 100, integer: true }) : 3000,
  rounds: values.rounds ? numberFlag(values.rounds, "--rounds", { min: 1, integer: true }) : 3,
  seconds: values.seconds ? numberFlag(values.seconds, "--seconds", { min: 1, integer: true }) : 5,
  json: values.json === true,
}));

const log = (s: string) => console.error(`[sql-cost] ${s}`);
/** The server's log, quoted when a pgbench transaction fails. */
let serverLog = "";

// Users are 00000000-0000-4000-<group>-000000<100000 + i>: the last six
// digits are a pgbench variable, so its scripts name the seeded rows.
const id = (group: string, i: number) => `00000000-0000-4000-${group}-000000${100000 + i}`;
const HOT_ORG = id("8000", 0);
const POLICY_ORG = id("8000", 1);
const MEMBERS = 1000;
const hotUser = (i: number) => id("9000", i);
const policyUser = (i: number) => id("c000", i);
const manyOrg = (i: number) => id("b000", i);
const manyUser = (i: number) => id("a000", i);

/** Org, user and channel of a call. */
type Caller = [string, string, string];

const LIMITS = { org: 1_000_000_000, user: 1_000_000_000, ip: 1_000_000_000, window: 60 };
const MODEL = "gpt-4.1-mini";

function beginArgs(
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

interface TurnCost {
  beginUs: number;
  finishUs: number;
  clusterUsPerTurn: number;
}

/**
 * `turns` answered turns through the direct transport on one connection;
 * backend CPU per begin and per finish call, and every Postgres process'
 * CPU per turn.
 */
async function turnCost(
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
async function statementTimes(url: string) {
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
async function beginCallText(args: BeginTurnArgs): Promise<string> {
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

async function pgbench(
  bin: string,
  url: string,
  clients: number,
  seconds: number,
  script: string,
  extra: string[] = [],
  pgOptions = "",
): Promise<number> {
  const u = new URL(url);
  const r = await new Deno.Command(`${bin}/pgbench`, {
    args: [
      ...["-n", "-h", u.hostname, "-p", u.port, "-U", "postgres"],
      ...["-c", String(clients), "-j", String(Math.min(clients, 2)), "-T", String(seconds)],
      ...["-f", script, "--failures-detailed", "--verbose-errors", ...extra, "postgres"],
    ],
    env: { PGOPTIONS: `--client-min-messages=warning ${pgOptions}`.trim() },
    stdout: "piped",
    stderr: "piped",
  }).output();
  const out = new TextDecoder().decode(r.stdout) + new TextDecoder().decode(r.stderr);
  if (!r.success) throw new Error(`pgbench failed:\n${out}`);
  const failed = Number(/number of failed transactions: (\d+)/.exec(out)?.[1] ?? 0);
  if (failed > 0) {
    const tail = await Deno.readTextFile(serverLog).catch(() => "");
    throw new Error(`pgbench: ${failed} failed transactions\n${out}\n${tail.slice(-3000)}`);
  }
  return Number(/tps = ([\d.]+)/.exec(out)?.[1] ?? NaN);
}

async function main() {
  const tools = await findPostgresTools();
  const pg = await startPostgres({
    fast: false,
    extraSettings: {
      max_connections: "300",
      shared_preload_libraries: "pg_stat_statements",
      "pg_stat_statements.track": "none",
    },
  });
  serverLog = `${pg.dataDir}/../postgres.log`;
  const work = await Deno.makeTempDir({ prefix: "agent-chat-sql-cost-" });
  const sql = postgres(pg.url, { max: 2, onnotice: () => {} });
  try {
    await migrate(pg.url, { pgCron: false });
    await sql`create extension pg_stat_statements`;
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
    // (b): a tenant policy, a channel limit for everyone and one for the
    // tenant, org and user token quotas (all far above what the run uses).
    // The channel rows are for whatsapp, the channel of (b) only: (a) calls
    // on app, where no policy row applies.
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
    await sql`select ops.policy_set(null, 'whatsapp', ${
      sql.json({ channel_max_requests: 900_000_000 })
    }, 'sql-cost')`;
    await sql`select ops.policy_set(${POLICY_ORG}::uuid, 'whatsapp', ${
      sql.json({ channel_max_requests: 900_000_000 })
    }, 'sql-cost')`;

    const hot = (n: number): Caller => [HOT_ORG, hotUser(n % MEMBERS), "app"];
    const withPolicy = (n: number): Caller => [POLICY_ORG, policyUser(n % MEMBERS), "whatsapp"];

    // pgbench scripts: the function's call text with pgbench variables.
    const beginScript = async (name: string, [org, user, channel]: Caller, orgVar: boolean) => {
      const args = beginArgs([org, user, channel], "", true, 7);
      const text = (await beginCallText({
        ...args,
        p_session_id: null,
        p_client_ip: "10.1.0.7",
        p_request_id: "00000000-0000-4000-8000-00000000dead",
      }))
        .replace(user.slice(-6), ":u")
        .replace(orgVar ? org.slice(-6) : "\0", ":u")
        .replace("10.1.0.7", "10.1.0.:ip");
      const path = `${work}/${name}.sql`;
      await Deno.writeTextFile(
        path,
        `\\set u random(100000, ${100000 + MEMBERS - 1})\n\\set ip random(1, 250)\n${text};\n`,
      );
      return path;
    };
    const hotScript = await beginScript("begin-hot", hot(0), false);
    const manyScript = await beginScript("begin-many", [manyOrg(0), manyUser(0), "app"], true);
    const policyScript = await beginScript("begin-policy", withPolicy(0), false);
    await sql.unsafe(`
      create table bench_naive (k text primary key, n bigint not null);
      insert into bench_naive values ('org-hot', 0);`);
    const naiveScript = `${work}/naive.sql`;
    await Deno.writeTextFile(
      naiveScript,
      `insert into bench_naive as c values ('org-hot', 1) on conflict (k) do update set n = c.n + 1 where c.n < 1000000000000;\n`,
    );

    const rounds: Array<Record<string, number>> = [];
    for (let r = 0; r < flags.rounds; r++) {
      const f: Record<string, number> = {};
      const a = await turnCost(pg.url, pg.dataDir, hot, flags.turns);
      f.begin_us = a.beginUs;
      f.finish_us = a.finishUs;
      f.cluster_us = a.clusterUsPerTurn;
      const b = await turnCost(pg.url, pg.dataDir, withPolicy, flags.turns);
      f.policy_begin_us = b.beginUs;
      f.policy_finish_us = b.finishUs;
      f.policy_cluster_us = b.clusterUsPerTurn;
      await turnCost(pg.url, pg.dataDir, hot, Math.min(flags.turns, 1000), { track: true });
      const st = await statementTimes(pg.url);
      f.stmt_begin_us = st.beginUs;
      f.stmt_finish_us = st.finishUs;
      const s = flags.seconds;
      f.naive_1 = await pgbench(
        tools.bin,
        pg.url,
        1,
        s,
        naiveScript,
        ["-M", "prepared"],
        "-c synchronous_commit=off",
      );
      f.hot_1 = await pgbench(tools.bin, pg.url, 1, s, hotScript);
      f.naive_16 = await pgbench(
        tools.bin,
        pg.url,
        16,
        s,
        naiveScript,
        ["-M", "prepared"],
        "-c synchronous_commit=off",
      );
      f.hot_16 = await pgbench(tools.bin, pg.url, 16, s, hotScript);
      f.many_16 = await pgbench(tools.bin, pg.url, 16, s, manyScript);
      f.policy_16 = await pgbench(tools.bin, pg.url, 16, s, policyScript);
      log(
        `round ${r + 1}: ${
          JSON.stringify(Object.fromEntries(Object.entries(f).map(([k, v]) => [k, Math.round(v)])))
        }`,
      );
      rounds.push(f);
    }
    const m = (k: string) => median(rounds.map((f) => f[k]!));
    const figures = Object.fromEntries(Object.keys(rounds[0]!).map((k) => [k, m(k)]));
    if (flags.json) {
      console.log(
        JSON.stringify(
          {
            rounds: flags.rounds,
            turns: flags.turns,
            seconds: flags.seconds,
            figures,
            each: rounds,
          },
          null,
          2,
        ),
      );
      return;
    }
    const ms = (us: number) => fixed(us / 1000, 3);
    console.log(
      markdownTable([
        "Postgres CPU per call (ms)",
        "begin turn",
        "finish turn",
        "answered turn",
        "all Postgres processes per turn",
        "pg_stat_statements exec (begin / finish)",
      ], [
        [
          "(a) no policy rows",
          ms(m("begin_us")),
          ms(m("finish_us")),
          ms(m("begin_us") + m("finish_us")),
          ms(m("cluster_us")),
          `${ms(m("stmt_begin_us"))} / ${ms(m("stmt_finish_us"))}`,
        ],
        [
          "(b) tenant policy, channel limits, token quotas",
          ms(m("policy_begin_us")),
          ms(m("policy_finish_us")),
          ms(m("policy_begin_us") + m("policy_finish_us")),
          ms(m("policy_cluster_us")),
          "",
        ],
      ]),
    );
    console.log();
    console.log(markdownTable(["calls/s", "1 client", "16 clients", "vs naive at 16"], [
      [
        "naive reference: one upsert, async commit, prepared (hot key)",
        Math.round(m("naive_1")),
        Math.round(m("naive_16")),
        "1.00",
      ],
      [
        "begin turn, one hot org (a)",
        Math.round(m("hot_1")),
        Math.round(m("hot_16")),
        fixed(m("hot_16") / m("naive_16")),
      ],
      [
        "begin turn, 1,000 orgs (a)",
        "",
        Math.round(m("many_16")),
        fixed(m("many_16") / m("naive_16")),
      ],
      [
        "begin turn, one hot org (b)",
        "",
        Math.round(m("policy_16")),
        fixed(m("policy_16") / m("naive_16")),
      ],
    ]));
  } finally {
    await sql.end({ timeout: 1 });
    await pg.stop();
    await Deno.remove(work, { recursive: true }).catch(() => {});
  }
}

await main();
