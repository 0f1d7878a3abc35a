/**
 * HTTP: what an answered turn costs, end to end, for each transport and
 * store, against the bare forwarder in the same run (scripts/bench/forwarder.ts:
 * same body parse, same upstream call, nothing else).
 *   - CPU per turn at concurrency 16, from /proc: every process of the
 *     PostgreSQL cluster (per answered turn), the function process, and the
 *     stand-ins process (OpenAI, Auth, and PostgREST for rpc) per request;
 *   - unloaded added latency: p50/p99 at concurrency 1 minus the
 *     forwarder's, median of the profile's runs;
 *   - throughput at concurrency 16 and 64 as a share of the forwarder's.
 * On a 2-core machine a loaded p50 is mostly queueing, so these are the
 * figures that say what the function costs.
 */
import { fixed, markdownTable, median } from "./stats.ts";
import type {
  BenchContext,
  ScenarioResult,
  Store,
  Target,
  Transport,
  WrkResult,
} from "./context.ts";
import { functionProcess, type Service } from "../../supabase/tests/support/local-stack.ts";

const forwarderProcess = new URL("./forwarder.ts", import.meta.url).pathname;
const baselineFile = new URL("./baseline.json", import.meta.url).pathname;

export const CONFIGS: Array<{ transport: Transport; store: Store }> = [
  { transport: "direct", store: "supabase" },
  { transport: "direct", store: "redis" },
  { transport: "rpc", store: "supabase" },
  { transport: "rpc", store: "redis" },
];

export interface Baseline {
  measured: string;
  /** Throughput at concurrency 64 as a share of the forwarder's, per "transport/store". */
  c64Share: Record<string, number>;
}

export interface HttpFigures {
  key: string;
  pgCpuPerTurn: number;
  fnCpuPerRequest: number;
  standInsCpuPerRequest: number;
  addedP50: number;
  addedP99: number;
  share16: number;
  share64: number;
  rps16: number;
  rps64: number;
  failures: number;
}

const settle = () => new Promise((r) => setTimeout(r, 300));

export async function readBaseline(): Promise<Baseline | undefined> {
  try {
    return JSON.parse(await Deno.readTextFile(baselineFile));
  } catch {
    return undefined;
  }
}

async function writeBaseline(figures: HttpFigures[]): Promise<void> {
  const baseline: Baseline = {
    measured: new Date().toISOString().slice(0, 10),
    c64Share: Object.fromEntries(figures.map((f) => [f.key, Number(f.share64.toFixed(4))])),
  };
  await Deno.writeTextFile(baselineFile, JSON.stringify(baseline, null, 2) + "\n");
}

export async function http(
  ctx: BenchContext,
  options: { recordBaseline: boolean },
): Promise<ScenarioResult & { figures: HttpFigures[] }> {
  const { seconds, unloadedRuns } = ctx.profile;
  const forwarder = await ctx.stack.spawn(forwarderProcess, {
    OPENAI_BASE_URL: `${ctx.standIns.url}/v1`,
  });
  await ctx.wrk(forwarder.url, 16, 1); // warm-up
  const fwd: Record<number, WrkResult> = {};
  for (const c of [16, 64]) fwd[c] = await ctx.wrk(forwarder.url, c, seconds);
  ctx.log(`forwarder: ${Math.round(fwd[16]!.rps)} req/s @16, ${Math.round(fwd[64]!.rps)} @64`);

  const figures: HttpFigures[] = [];
  const e2eRows: Array<Array<string | number>> = [];
  for (const { transport, store } of CONFIGS) {
    const key = `${transport}/${store}`;
    const fn: Service = await ctx.stack.spawn(functionProcess, ctx.functionEnv(store, transport));
    await ctx.wrk(fn.url, 16, 1); // warm-up: JIT, connection pools

    // Unloaded: concurrency 1, each run right after the forwarder's.
    const added50: number[] = [];
    const added99: number[] = [];
    for (let i = 0; i < unloadedRuns; i++) {
      const base = await ctx.wrk(forwarder.url, 1, seconds);
      const one = await ctx.wrk(fn.url, 1, seconds);
      added50.push(one.p50 - base.p50);
      added99.push(one.p99 - base.p99);
      e2eRows.push([key, 1, Math.round(one.rps), fixed(one.p50), fixed(one.p99), one.failures]);
    }

    // Concurrency 16 with CPU accounting.
    await settle();
    const before = {
      pg: await ctx.postgresCpuMs(),
      fn: await ctx.cpuMs(fn.pid),
      standIns: await ctx.cpuMs(ctx.standIns.pid),
    };
    const r16 = await ctx.wrk(fn.url, 16, seconds);
    await settle(); // usage inserts finishing after the answers
    const after = {
      pg: await ctx.postgresCpuMs(),
      fn: await ctx.cpuMs(fn.pid),
      standIns: await ctx.cpuMs(ctx.standIns.pid),
    };
    const r64 = await ctx.wrk(fn.url, 64, seconds);
    for (const [c, r] of [[16, r16], [64, r64]] as const) {
      e2eRows.push([key, c, Math.round(r.rps), fixed(r.p50), fixed(r.p99), r.failures]);
    }
    await fn.stop();

    const answered = r16.requests - r16.failures;
    const f: HttpFigures = {
      key,
      pgCpuPerTurn: (after.pg - before.pg) / answered,
      fnCpuPerRequest: (after.fn - before.fn) / r16.requests,
      standInsCpuPerRequest: (after.standIns - before.standIns) / r16.requests,
      addedP50: median(added50),
      addedP99: median(added99),
      share16: r16.rps / fwd[16]!.rps,
      share64: r64.rps / fwd[64]!.rps,
      rps16: r16.rps,
      rps64: r64.rps,
      failures: r16.failures + r64.failures,
    };
    figures.push(f);
    ctx.log(
      `${key}: postgres ${fixed(f.pgCpuPerTurn)} ms/turn, function ${
        fixed(f.fnCpuPerRequest)
      } ms/request, added p50 ${fixed(f.addedP50)} p99 ${fixed(f.addedP99)} ms, ${
        Math.round(r16.rps)
      } req/s @16 (${fixed(f.share16 * 100, 0)}%), ${Math.round(r64.rps)} @64 (${
        fixed(f.share64 * 100, 0)
      }%)`,
    );
  }
  await forwarder.stop();
  for (const c of [16, 64]) {
    e2eRows.push([
      "bare forwarder",
      c,
      Math.round(fwd[c]!.rps),
      fixed(fwd[c]!.p50),
      fixed(fwd[c]!.p99),
      fwd[c]!.failures,
    ]);
  }

  if (options.recordBaseline) await writeBaseline(figures);
  const costRows = figures.map((f) => [
    f.key,
    fixed(f.pgCpuPerTurn),
    fixed(f.fnCpuPerRequest),
    fixed(f.standInsCpuPerRequest),
    fixed(f.addedP50),
    fixed(f.addedP99),
    `${Math.round(f.rps16)} (${fixed(f.share16 * 100, 0)}%)`,
    `${Math.round(f.rps64)} (${fixed(f.share64 * 100, 0)}%)`,
  ]);
  return {
    figures,
    sections: {
      cost: markdownTable([
        "transport/store",
        "postgres CPU ms/turn",
        "function CPU ms/request",
        "stand-ins CPU ms/request",
        "added p50 ms (c1)",
        "added p99 ms (c1)",
        "req/s c16 (of forwarder)",
        "req/s c64 (of forwarder)",
      ], costRows),
      http: markdownTable(
        ["server", "concurrency", "req/s", "p50 ms", "p99 ms", "failed"],
        e2eRows,
      ),
    },
    targets: await targets(figures),
  };
}

async function targets(figures: HttpFigures[]): Promise<Target[]> {
  const baseline = await readBaseline();
  const main = figures.find((f) => f.key === "direct/supabase")!;
  const out: Target[] = [
    {
      target: "Postgres CPU per answered turn ≤ 0.6 ms (direct, supabase store)",
      measured: `${fixed(main.pgCpuPerTurn)} ms`,
      met: main.pgCpuPerTurn <= 0.6,
    },
    {
      target: "function CPU per request ≤ 0.5 ms (direct, supabase store)",
      measured: `${fixed(main.fnCpuPerRequest)} ms`,
      met: main.fnCpuPerRequest <= 0.5,
    },
    {
      target: "unloaded added p50 ≤ 1.5 ms over the forwarder (direct, supabase store)",
      measured: `${fixed(main.addedP50)} ms`,
      met: main.addedP50 <= 1.5,
    },
  ];
  for (const f of figures) {
    const base = baseline?.c64Share[f.key];
    out.push({
      target:
        `throughput at concurrency 64 ≥ 2× the baseline's, as a share of the forwarder (${f.key})`,
      measured: base
        ? `${fixed(f.share64 * 100, 1)}% vs ${fixed(base * 100, 1)}% (${
          fixed(f.share64 / base)
        }×, baseline ${baseline!.measured})`
        : `${fixed(f.share64 * 100, 1)}% (no baseline recorded)`,
      met: base !== undefined && f.share64 >= 2 * base,
    });
  }
  for (const f of figures) {
    if (f.failures > 0) {
      out.push({ target: `no failed requests (${f.key})`, measured: `${f.failures}`, met: false });
    }
  }
  return out;
}
