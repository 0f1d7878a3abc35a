/**
 * `deno task bench [--quick] [--only a,b] [--write-docs] [--record-baseline]`
 * (npm run bench): the benchmark scenarios (scripts/bench/: begin-turn,
 * hot-tenant, hot-settle, ideal-turn, http, growth, cold-start, memory, fallbacks on one local stack with durable
 * PostgreSQL settings; sql-cost on a PostgreSQL of its own). Prints the
 * targets and tables, and writes the results regions of docs/benchmarks.md
 * (to .local/results/ unless --write-docs; with --only, the regions of the
 * scenarios that ran). Ctrl-C stops everything it started.
 */
import { choiceFlag, commandLine, messageOf } from "./cli.ts";
import { writeResults } from "./results.ts";
import { machineFacts, markdownTable } from "./bench/stats.ts";
import { startLocalStack } from "../supabase/tests/support/local-stack.ts";
import { which } from "../supabase/tests/support/tools.ts";
import {
  type BenchContext,
  type BenchProfile,
  createContext,
  PROFILES,
  type ScenarioResult,
  type Target,
} from "./bench/context.ts";
import { beginTurn } from "./bench/begin-turn.ts";
import { hotTenant } from "./bench/hot-tenant.ts";
import { hotSettle } from "./bench/hot-settle.ts";
import { idealTurn } from "./bench/ideal-turn.ts";
import { http } from "./bench/http.ts";
import { growth } from "./bench/growth.ts";
import { coldStart } from "./bench/cold-start.ts";
import { memory } from "./bench/memory.ts";
import { SQL_COST_PROFILES, sqlCost } from "./bench/sql-cost.ts";
import { fallbacks } from "./bench/fallbacks.ts";

/** The scenarios on the shared stack, in the order they run. */
const ON_STACK: Record<
  string,
  (ctx: BenchContext, o: { recordBaseline: boolean }) => Promise<ScenarioResult>
> = {
  "begin-turn": (ctx) => beginTurn(ctx),
  "hot-tenant": (ctx) => hotTenant(ctx),
  "hot-settle": (ctx) => hotSettle(ctx),
  "ideal-turn": (ctx) => idealTurn(ctx),
  http: (ctx, o) => http(ctx, o),
  growth: (ctx) => growth(ctx),
  "cold-start": (ctx) => coldStart(ctx),
  memory: (ctx) => memory(ctx),
  fallbacks: (ctx) => fallbacks(ctx),
};
const SCENARIOS = [...Object.keys(ON_STACK), "sql-cost"];

const flags = commandLine({
  usage:
    `usage: deno task bench [--quick] [--only <scenario,…>] [--write-docs] [--record-baseline]   (npm run bench)

Measures what docs/benchmarks.md reports, on this machine, and prints the tables.
  --quick            short runs (under 3 minutes; figures are noisier)
  --only a,b         run only these scenarios: ${SCENARIOS.join(", ")}
                     (e.g. npm run bench -- --only sql-cost --quick)
  --write-docs       rewrite the results in docs/benchmarks.md (default: .local/results/)
  --record-baseline  keep this run's throughput as the baseline (scripts/bench/baseline.json)`,
  options: {
    quick: { type: "boolean" },
    only: { type: "string" },
    "write-docs": { type: "boolean" },
    "record-baseline": { type: "boolean" },
  },
}, ({ values }) => ({
  profile: PROFILES[values.quick ? "quick" : "full"],
  only: values.only === undefined
    ? undefined
    : values.only.split(",").map((s) => choiceFlag(s.trim(), "--only", SCENARIOS)),
  writeDocs: values["write-docs"] === true,
  recordBaseline: values["record-baseline"] === true,
}));

const selected = flags.only ?? SCENARIOS;
const started = performance.now();
const results: ScenarioResult[] = [];
try {
  const onStack = Object.keys(ON_STACK).filter((name) => selected.includes(name));
  if (onStack.length > 0) results.push(...await runOnStack(onStack, flags.profile));
  if (selected.includes("sql-cost")) {
    results.push(await sqlCost(SQL_COST_PROFILES[flags.profile.name]));
  }
} catch (error) {
  // The whole message: a failed load tool's output is the clue.
  console.error(`error: ${error instanceof Error ? error.message : String(error)}`);
  if (Deno.env.get("AGENT_CHAT_DEBUG") === "1") console.error(error);
  Deno.exit(1);
}
await report(results, flags.profile);

/** The scenarios that share one local stack, on it; the stack is stopped either way. */
async function runOnStack(names: string[], profile: BenchProfile): Promise<ScenarioResult[]> {
  const needsWrk = names.some((name) => name !== "cold-start" && name !== "fallbacks");
  if (needsWrk && !(await which("wrk"))) {
    console.error("error: wrk not found: apt-get install wrk (scripts/setup.sh --with-bench)");
    Deno.exit(1);
  }
  const stack = await startLocalStack({
    pgCron: false,
    postgres: { fast: false, extraSettings: { max_connections: "300" } },
  }).catch((error) => {
    console.error(`error: ${messageOf(error)}`);
    Deno.exit(1);
  });
  try {
    console.error(`[bench] postgres ${stack.postgres.url} redis ${stack.redis.url}`);
    const ctx = await createContext(stack, profile);
    const out: ScenarioResult[] = [];
    for (const name of names) out.push(await ON_STACK[name]!(ctx, flags));
    return out;
  } finally {
    await stack.stop();
  }
}

/** Prints every table and writes the doc's regions (all of them only after a whole run). */
async function report(results: ScenarioResult[], profile: BenchProfile) {
  const targets: Target[] = results.flatMap((r) => r.targets);
  const sections: Record<string, string> = Object.assign({}, ...results.map((r) => r.sections));
  const targetTable = markdownTable(
    ["target", "measured", "result"],
    targets.map((t) => [t.target, t.measured, t.met ? "met" : "**not met**"]),
  );
  if (flags.only) {
    console.log(`\n## targets of ${selected.join(", ")}\n\n${targetTable}`);
  } else {
    sections.targets = targetTable;
    sections.run = await runLine(profile);
  }
  for (const [name, text] of Object.entries(sections)) console.log(`\n## ${name}\n\n${text}`);
  const written = await writeResults("docs/benchmarks.md", sections, {
    writeDocs: flags.writeDocs,
  });
  console.error(`[bench] results written to ${written}`);
}

async function runLine(profile: BenchProfile): Promise<string> {
  const facts = await machineFacts();
  const date = new Date().toISOString().slice(0, 16).replace("T", " ") + " UTC";
  const command = `npm run bench${profile.name === "quick" ? " -- --quick" : ""}`;
  return `Last run: \`${command}\` (profile **${profile.name}**, ${profile.seconds} s per load run, ${
    Math.round((performance.now() - started) / 1000)
  } s in all) on ${date}.
Machine: ${facts.cpu}, ${facts.cores} cores, ${facts.memory}; ${facts.postgres}; Redis ${
    /v=(\S+)/.exec(facts.redis)?.[1] ?? facts.redis
  }; Deno ${facts.deno}; Linux ${facts.kernel}.`;
}
