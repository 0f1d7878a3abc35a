/**
 * `deno task bench [--quick] [--write-docs] [--record-baseline]` (npm run
 * bench): the benchmark scenarios (scripts/bench/: begin-turn, hot-tenant, ideal-turn, http, growth,
 * cold-start, memory) on one local stack with durable PostgreSQL settings.
 * Prints the targets and tables, and writes the results regions of
 * docs/benchmarks.md (to .local/results/ unless --write-docs). Ctrl-C
 * stops everything it started.
 */
import { commandLine, messageOf } from "./cli.ts";
import { writeResults } from "./results.ts";
import { machineFacts, markdownTable } from "./bench/stats.ts";
import { startLocalStack } from "../supabase/tests/support/local-stack.ts";
import { which } from "../supabase/tests/support/tools.ts";
import { createContext, PROFILES, type ScenarioResult, type Target } from "./bench/context.ts";
import { beginTurn } from "./bench/begin-turn.ts";
import { hotTenant } from "./bench/hot-tenant.ts";
import { idealTurn } from "./bench/ideal-turn.ts";
import { http } from "./bench/http.ts";
import { growth } from "./bench/growth.ts";
import { coldStart } from "./bench/cold-start.ts";
import { memory } from "./bench/memory.ts";

const flags = commandLine({
  usage: `usage: deno task bench [--quick] [--write-docs] [--record-baseline]   (npm run bench)

Measures what docs/benchmarks.md reports, on this machine, and prints the tables.
  --quick            short runs (under 3 minutes; figures are noisier)
  --write-docs       rewrite the results in docs/benchmarks.md (default: .local/results/)
  --record-baseline  keep this run's throughput as the baseline (scripts/bench/baseline.json)`,
  options: {
    quick: { type: "boolean" },
    "write-docs": { type: "boolean" },
    "record-baseline": { type: "boolean" },
  },
}, ({ values }) => ({
  profile: PROFILES[values.quick ? "quick" : "full"],
  writeDocs: values["write-docs"] === true,
  recordBaseline: values["record-baseline"] === true,
}));

if (!(await which("wrk"))) {
  console.error("error: wrk not found: apt-get install wrk (scripts/setup.sh --with-bench)");
  Deno.exit(1);
}

const started = performance.now();
const stack = await startLocalStack({
  pgCron: false,
  postgres: { fast: false, extraSettings: { max_connections: "300" } },
}).catch((error) => {
  console.error(`error: ${messageOf(error)}`);
  Deno.exit(1);
});
const results: ScenarioResult[] = [];
let failed = false;
try {
  console.error(`[bench] postgres ${stack.postgres.url} redis ${stack.redis.url}`);
  const ctx = await createContext(stack, flags.profile);
  results.push(await beginTurn(ctx));
  results.push(await hotTenant(ctx));
  results.push(await idealTurn(ctx));
  results.push(await http(ctx, { recordBaseline: flags.recordBaseline }));
  results.push(await growth(ctx));
  results.push(await coldStart(ctx));
  results.push(await memory(ctx));
} catch (error) {
  // The whole message: a failed load tool's output is the clue.
  console.error(`error: ${error instanceof Error ? error.message : String(error)}`);
  if (Deno.env.get("AGENT_CHAT_DEBUG") === "1") console.error(error);
  failed = true;
} finally {
  await stack.stop();
}
if (failed) Deno.exit(1);

const targets: Target[] = results.flatMap((r) => r.targets);
const sections: Record<string, string> = Object.assign({}, ...results.map((r) => r.sections));
sections.targets = markdownTable(
  ["target", "measured", "result"],
  targets.map((t) => [t.target, t.measured, t.met ? "met" : "**not met**"]),
);
const facts = await machineFacts();
const date = new Date().toISOString().slice(0, 16).replace("T", " ") + " UTC";
const command = `npm run bench${flags.profile.name === "quick" ? " -- --quick" : ""}`;
sections.run =
  `Last run: \`${command}\` (profile **${flags.profile.name}**, ${flags.profile.seconds} s per load run, ${
    Math.round((performance.now() - started) / 1000)
  } s in all) on ${date}.
Machine: ${facts.cpu}, ${facts.cores} cores, ${facts.memory}; ${facts.postgres}; Redis ${
    /v=(\S+)/.exec(facts.redis)?.[1] ?? facts.redis
  }; Deno ${facts.deno}; Linux ${facts.kernel}.`;
for (const [name, text] of Object.entries(sections)) console.log(`\n## ${name}\n\n${text}`);
const written = await writeResults("docs/benchmarks.md", sections, {
  writeDocs: flags.writeDocs,
});
console.error(`[bench] results written to ${written}`);
