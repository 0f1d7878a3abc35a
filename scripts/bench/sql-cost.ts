/**
 * Postgres cost of a chat turn, measured in the database alone: a bench
 * scenario (`npm run bench -- --only sql-cost`), also runnable alone:
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
 *    parse and plan time). (sql-cost-turns.ts)
 * 2. Calls per second of begin turn (pgbench, simple protocol, the
 *    function's call text) on one hot org and on many orgs, next to a fair
 *    naive reference: one statement (an upsert of one counter row with a
 *    check), asynchronous commit, a generic plan (prepared statement), on
 *    the same hot key, in the same run.
 *
 * Owns its PostgreSQL (durable settings, as production: fsync on, with
 * pg_stat_statements preloaded), not the bench stack's. Each figure is the
 * median of the rounds.
 */
import postgres from "postgres";
import { commandLine, numberFlag } from "../cli.ts";
import { startPostgres } from "../../supabase/tests/support/postgres.ts";
import { migrate } from "../../supabase/tests/support/migrate.ts";
import { findPostgresTools } from "../../supabase/tests/support/tools.ts";
import type { BenchProfile, ScenarioResult } from "./context.ts";
import {
  beginArgs,
  beginCallText,
  type Caller,
  HOT_ORG,
  hotUser,
  manyOrg,
  manyUser,
  MEMBERS,
  POLICY_ORG,
  policyUser,
  seedMembers,
  seedPolicies,
  statementTimes,
  turnCost,
} from "./sql-cost-turns.ts";
import { fixed, markdownTable, median } from "./stats.ts";

export interface SqlCostOptions {
  /** Answered turns per round and policy set-up. */
  turns: number;
  rounds: number;
  /** Length of each pgbench run. */
  seconds: number;
}

/** What each bench profile measures. */
export const SQL_COST_PROFILES: Record<BenchProfile["name"], SqlCostOptions> = {
  quick: { turns: 500, rounds: 1, seconds: 2 },
  full: { turns: 3000, rounds: 3, seconds: 5 },
};

/** The target docs/benchmarks.md holds the turn to (backend CPU, no policy rows). */
const CPU_TARGET_MS = 0.6;

const log = (s: string) => console.error(`[sql-cost] ${s}`);

const hot = (n: number): Caller => [HOT_ORG, hotUser(n % MEMBERS), "app"];
const withPolicy = (n: number): Caller => [POLICY_ORG, policyUser(n % MEMBERS), "whatsapp"];

/** The scenario: its own PostgreSQL, seeded, measured `rounds` times; medians. */
export async function sqlCost(
  options: SqlCostOptions,
): Promise<ScenarioResult & { figures: Record<string, number>; each: Record<string, number>[] }> {
  const tools = await findPostgresTools();
  const pg = await startPostgres({
    fast: false,
    extraSettings: {
      max_connections: "300",
      shared_preload_libraries: "pg_stat_statements",
      "pg_stat_statements.track": "none",
    },
  });
  const work = await Deno.makeTempDir({ prefix: "agent-chat-sql-cost-" });
  const sql = postgres(pg.url, { max: 2, onnotice: () => {} });
  try {
    await migrate(pg.url, { pgCron: false });
    await sql`create extension pg_stat_statements`;
    await seedMembers(sql);
    await seedPolicies(sql);
    const scripts = await writeScripts(sql, work);
    const bench = (clients: number, script: string, extra: string[] = [], pgOptions = "") =>
      pgbench(tools.bin, pg.url, `${pg.dataDir}/../postgres.log`, {
        clients,
        seconds: options.seconds,
        script,
        extra,
        pgOptions,
      });
    const each: Record<string, number>[] = [];
    for (let r = 0; r < options.rounds; r++) {
      const f = await round(pg, options.turns, scripts, bench);
      log(`round ${r + 1}: ${JSON.stringify(mapValues(f, Math.round))}`);
      each.push(f);
    }
    const figures = mapValues(each[0]!, (_, k) => median(each.map((f) => f[k]!)));
    return { figures, each, ...report(figures, options) };
  } finally {
    await sql.end({ timeout: 1 });
    await pg.stop();
    await Deno.remove(work, { recursive: true }).catch(() => {});
  }
}

function mapValues(
  o: Record<string, number>,
  fn: (v: number, k: string) => number,
): Record<string, number> {
  return Object.fromEntries(Object.entries(o).map(([k, v]) => [k, fn(v, k)]));
}

interface Scripts {
  hot: string;
  many: string;
  policy: string;
  naive: string;
}

/** pgbench scripts: the function's call text with pgbench variables, and the naive reference. */
async function writeScripts(sql: postgres.Sql, work: string): Promise<Scripts> {
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
  await sql.unsafe(`
    create table bench_naive (k text primary key, n bigint not null);
    insert into bench_naive values ('org-hot', 0);`);
  const naive = `${work}/naive.sql`;
  await Deno.writeTextFile(
    naive,
    `insert into bench_naive as c values ('org-hot', 1) on conflict (k) do update set n = c.n + 1 where c.n < 1000000000000;\n`,
  );
  return {
    hot: await beginScript("begin-hot", hot(0), false),
    many: await beginScript("begin-many", [manyOrg(0), manyUser(0), "app"], true),
    policy: await beginScript("begin-policy", withPolicy(0), false),
    naive,
  };
}

type Bench = (
  clients: number,
  script: string,
  extra?: string[],
  pgOptions?: string,
) => Promise<number>;

/** One round: CPU per call for (a) and (b), statement times, then calls/s. */
async function round(
  pg: { url: string; dataDir: string },
  turns: number,
  scripts: Scripts,
  bench: Bench,
): Promise<Record<string, number>> {
  const a = await turnCost(pg.url, pg.dataDir, hot, turns);
  const b = await turnCost(pg.url, pg.dataDir, withPolicy, turns);
  await turnCost(pg.url, pg.dataDir, hot, Math.min(turns, 1000), { track: true });
  const st = await statementTimes(pg.url);
  const naive = (clients: number) =>
    bench(clients, scripts.naive, ["-M", "prepared"], "-c synchronous_commit=off");
  return {
    begin_us: a.beginUs,
    finish_us: a.finishUs,
    cluster_us: a.clusterUsPerTurn,
    policy_begin_us: b.beginUs,
    policy_finish_us: b.finishUs,
    policy_cluster_us: b.clusterUsPerTurn,
    stmt_begin_us: st.beginUs,
    stmt_finish_us: st.finishUs,
    naive_1: await naive(1),
    hot_1: await bench(1, scripts.hot),
    naive_16: await naive(16),
    hot_16: await bench(16, scripts.hot),
    many_16: await bench(16, scripts.many),
    policy_16: await bench(16, scripts.policy),
  };
}

async function pgbench(
  bin: string,
  url: string,
  serverLog: string,
  run: { clients: number; seconds: number; script: string; extra: string[]; pgOptions: string },
): Promise<number> {
  const u = new URL(url);
  const r = await new Deno.Command(`${bin}/pgbench`, {
    args: [
      ...["-n", "-h", u.hostname, "-p", u.port, "-U", "postgres"],
      ...["-c", String(run.clients), "-j", String(Math.min(run.clients, 2))],
      ...["-T", String(run.seconds), "-f", run.script, "--failures-detailed", "--verbose-errors"],
      ...run.extra,
      "postgres",
    ],
    env: { PGOPTIONS: `--client-min-messages=warning ${run.pgOptions}`.trim() },
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

/** The two tables (the `sql-cost` region of docs/benchmarks.md) and the CPU target. */
function report(m: Record<string, number>, options: SqlCostOptions): ScenarioResult {
  const ms = (us: number) => fixed(us / 1000, 3);
  const cpu = markdownTable([
    "Postgres CPU per call (ms)",
    "begin turn",
    "finish turn",
    "answered turn",
    "all Postgres processes per turn",
    "pg_stat_statements exec (begin / finish)",
  ], [
    [
      "(a) no policy rows",
      ms(m.begin_us!),
      ms(m.finish_us!),
      ms(m.begin_us! + m.finish_us!),
      ms(m.cluster_us!),
      `${ms(m.stmt_begin_us!)} / ${ms(m.stmt_finish_us!)}`,
    ],
    [
      "(b) tenant policy, channel limits, token quotas",
      ms(m.policy_begin_us!),
      ms(m.policy_finish_us!),
      ms(m.policy_begin_us! + m.policy_finish_us!),
      ms(m.policy_cluster_us!),
      "",
    ],
  ]);
  const ratio = (k: string) => fixed(m[k]! / m.naive_16!);
  const calls = markdownTable(["calls/s", "1 client", "16 clients", "vs naive at 16"], [
    [
      "naive reference: one upsert, async commit, prepared (hot key)",
      Math.round(m.naive_1!),
      Math.round(m.naive_16!),
      "1.00",
    ],
    ["begin turn, one hot org (a)", Math.round(m.hot_1!), Math.round(m.hot_16!), ratio("hot_16")],
    ["begin turn, 1,000 orgs (a)", "", Math.round(m.many_16!), ratio("many_16")],
    ["begin turn, one hot org (b)", "", Math.round(m.policy_16!), ratio("policy_16")],
  ]);
  const turnMs = (m.begin_us! + m.finish_us!) / 1000;
  const runLine = `${options.turns} answered turns per set-up, ${options.seconds} s per pgbench ` +
    `run, median of ${options.rounds} round${options.rounds === 1 ? "" : "s"}.`;
  return {
    sections: { "sql-cost": `${runLine}\n\n${cpu}\n\n${calls}` },
    targets: [{
      target:
        `Postgres backend CPU per answered turn ≤ ${CPU_TARGET_MS} ms, no policy rows (sql-cost)`,
      measured: `${fixed(turnMs, 2)} ms`,
      met: turnMs <= CPU_TARGET_MS,
    }],
  };
}

if (import.meta.main) {
  const flags = commandLine({
    usage: `usage: deno run --allow-all scripts/bench/sql-cost.ts [options]
       (or: npm run bench -- --only sql-cost [--quick])

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
    seconds: values.seconds
      ? numberFlag(values.seconds, "--seconds", { min: 1, integer: true })
      : 5,
    json: values.json === true,
  }));
  const result = await sqlCost(flags);
  if (flags.json) {
    const { turns, rounds, seconds } = flags;
    const { figures, each } = result;
    console.log(JSON.stringify({ rounds, turns, seconds, figures, each }, null, 2));
  } else {
    console.log(result.sections["sql-cost"]);
  }
}
