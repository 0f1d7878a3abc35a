/**
 * Begin turn: `public.agent_begin_turn` under pgbench (prepared statements,
 * as postgres.js sends it), on one hot org and on many orgs, at 1, 16 and
 * 64 clients; next to a fair naive reference: one statement upserting the
 * three counters, asynchronous commit, generic plan (no window, no
 * all-or-nothing, no membership or opt-out check).
 */
import { fixed, markdownTable, percentile } from "./stats.ts";
import { type BenchContext, HOT_ORG, type ScenarioResult } from "./context.ts";

const scenarios = {
  "hot org": {
    org: `'${HOT_ORG}'::uuid`,
    user: `('00000000-0000-4000-9000-' || lpad(cast(:u as text), 12, '0'))::uuid`,
    naiveOrg: `'org/hot'`,
  },
  "many orgs": {
    org: `('00000000-0000-4000-b000-' || lpad(cast(:u as text), 12, '0'))::uuid`,
    user: `('00000000-0000-4000-a000-' || lpad(cast(:u as text), 12, '0'))::uuid`,
    naiveOrg: `'org/' || cast(:u as text)`,
  },
} as const;

type Scenario = keyof typeof scenarios;

/** Every call admitted (limits set high): each one writes the three bucket rows. */
const beginTurnCall = (s: Scenario) =>
  `select public.agent_begin_turn(${scenarios[s].org}, ${
    scenarios[s].user
  }, '10.1.0.' || cast(:ip as text), 'app', null, 1000000, 1000000, 1000000, 60, 20, false);`;

// pgbench reads ":name" even inside quotes, so the keys use "/" where the buckets use ":".
const naiveCall = (s: Scenario) =>
  `insert into bench_counters (k, n) values ('ip/10.1.0.' || cast(:ip as text), 1), (${
    scenarios[s].naiveOrg
  }, 1), ('user/' || cast(:u as text), 1)
  on conflict (k) do update set n = bench_counters.n + 1;`;

async function measure(
  ctx: BenchContext,
  name: string,
  clients: number,
  call: string,
  naive: boolean,
) {
  const script = `${ctx.work}/${name.replaceAll(" ", "-")}-${clients}.sql`;
  await Deno.writeTextFile(script, `\\set u random(1, 1000)\n\\set ip random(1, 250)\n${call}\n`);
  const logDir = await Deno.makeTempDir({ dir: ctx.work });
  const out = await ctx.pgbench(
    clients,
    script,
    ["-M", "prepared", "-l", `--log-prefix=${logDir}/tx`],
    naive
      ? {
        PGOPTIONS:
          "--client-min-messages=warning -c synchronous_commit=off -c plan_cache_mode=force_generic_plan",
      }
      : {},
  );
  const rate = Number(/tps = ([\d.]+)/.exec(out)?.[1] ?? NaN);
  const latencies: number[] = [];
  for await (const f of Deno.readDir(logDir)) {
    for (const line of (await Deno.readTextFile(`${logDir}/${f.name}`)).split("\n")) {
      const us = Number(line.split(" ")[2]);
      if (line && Number.isFinite(us)) latencies.push(us / 1000);
    }
  }
  latencies.sort((a, b) => a - b);
  const r = { rate, p50: percentile(latencies, 50), p99: percentile(latencies, 99) };
  ctx.log(`${name} @${clients}: ${Math.round(rate)}/s p50 ${fixed(r.p50)} p99 ${fixed(r.p99)} ms`);
  return r;
}

export async function beginTurn(ctx: BenchContext): Promise<ScenarioResult> {
  await ctx
    .sql`create table if not exists public.bench_counters (k text primary key, n bigint not null)`;
  const rows: Array<Array<string | number>> = [];
  const rate: Record<string, number> = {};
  for (const s of Object.keys(scenarios) as Scenario[]) {
    for (const clients of [1, 16, 64]) {
      const r = await measure(ctx, `begin turn ${s}`, clients, beginTurnCall(s), false);
      const n = await measure(ctx, `naive ${s}`, clients, naiveCall(s), true);
      rate[`${s}@${clients}`] = r.rate;
      rate[`naive ${s}@${clients}`] = n.rate;
      rows.push([
        s,
        clients,
        Math.round(r.rate),
        fixed(r.p50),
        fixed(r.p99),
        Math.round(n.rate),
        `${fixed((r.rate / n.rate) * 100, 0)}%`,
      ]);
    }
  }
  const hot = rate["hot org@16"]! / rate["naive hot org@16"]!;
  return {
    sections: {
      "begin-turn": markdownTable(
        ["scenario", "clients", "calls/s", "p50 ms", "p99 ms", "naive calls/s", "of naive"],
        rows,
      ),
    },
    targets: [{
      target: "begin turn, one hot org, 16 clients ≥ 50% of the fair naive reference",
      measured: `${Math.round(rate["hot org@16"]!)}/s = ${fixed(hot * 100, 0)}% of ${
        Math.round(rate["naive hot org@16"]!)
      }/s`,
      met: hot >= 0.5,
    }],
  };
}
