/**
 * `deno task test:reliability [--profile ci|full] [--write-docs] [--only …]`:
 * the reliability scenarios (scripts/reliability/: load, faults, upstream,
 * bad input with hostile unicode, floods, slow bodies) against agent-chat
 * running as its own process, on one local stack.
 * Prints the checks, writes the results table of docs/reliability.md (to
 * .local/results/ unless --write-docs), exits 1 if any check did not hold.
 * Ctrl-C stops everything it started.
 */
import { choiceFlag, commandLine, messageOf } from "./cli.ts";
import { writeResults } from "./results.ts";
import { markdownTable } from "./bench/stats.ts";
import { startLocalStack } from "../supabase/tests/support/local-stack.ts";
import { type Check, createContext, PROFILES } from "./reliability/context.ts";
import { load } from "./reliability/load.ts";
import { faults } from "./reliability/faults.ts";
import { upstream } from "./reliability/upstream.ts";
import { upstreamFallback } from "./reliability/upstream-fallback.ts";
import { badInput } from "./reliability/bad-input.ts";
import { floods } from "./reliability/floods.ts";
import { slowBodies } from "./reliability/slow-bodies.ts";

const SCENARIOS = {
  load,
  faults,
  upstream,
  "upstream-fallback": upstreamFallback,
  "bad-input": badInput,
  floods,
  "slow-bodies": slowBodies,
} as const;
type ScenarioName = keyof typeof SCENARIOS;
const NAMES = Object.keys(SCENARIOS) as ScenarioName[];

const flags = commandLine({
  usage: `usage: deno task test:reliability [--profile ci|full] [--write-docs] [--only NAMES]

Load, faults, upstream failures, bad input (hostile unicode included), floods and slow
bodies against agent-chat as its own process; exits 1 if any check did not hold.
  --profile     ci (fewer requests, shorter outages) or full (default)
  --write-docs  rewrite the results in docs/reliability.md (default: .local/results/)
  --only        comma-separated scenarios to run, for working on one; the results are
                printed, never written (${NAMES.join(", ")})`,
  options: {
    profile: { type: "string", default: "full" },
    "write-docs": { type: "boolean" },
    only: { type: "string" },
  },
}, ({ values }) => ({
  profile: PROFILES[choiceFlag(values.profile, "--profile", ["ci", "full"] as const)],
  writeDocs: values["write-docs"] === true,
  only: values.only === undefined
    ? undefined
    : values.only.split(",").map((name) => choiceFlag(name.trim(), "--only", NAMES)),
}));

const scenarios = flags.only ?? NAMES;

function resultsTable(checks: Check[]): string {
  return markdownTable(
    ["area", "check", "tried", "held", "note"],
    checks.map((c) => [c.area, c.check, c.tried, c.held, c.note.replace(/\|/g, "\\|")]),
  );
}

let checks: Check[] = [];
let failed = false;
const stack = await startLocalStack({ pgCron: false, redis: { durable: true } }).catch((error) => {
  console.error(`error: ${messageOf(error)}`);
  Deno.exit(1);
});
try {
  console.error(`[reliability] postgres ${stack.postgres.url} redis ${stack.redis.url}`);
  const ctx = await createContext(stack, flags.profile);
  checks = ctx.checks;
  for (const name of scenarios) {
    const started = performance.now();
    await SCENARIOS[name](ctx);
    console.error(`[reliability] ${name}: ${((performance.now() - started) / 1000).toFixed(1)} s`);
  }
} catch (error) {
  // The whole message: a failed load tool's output is the clue.
  console.error(`error: ${error instanceof Error ? error.message : String(error)}`);
  if (Deno.env.get("AGENT_CHAT_DEBUG") === "1") console.error(error);
  failed = true;
} finally {
  await stack.stop();
}
const table = resultsTable(checks);
console.log(table);
if (!failed && flags.only === undefined) {
  const date = new Date().toISOString().slice(0, 16).replace("T", " ") + " UTC";
  const command = `npm run test:reliability${
    flags.profile.name === "ci" ? " -- --profile ci" : ""
  }`;
  const written = await writeResults("docs/reliability.md", {
    run: `Last run: \`${command}\` (profile **${flags.profile.name}**) on ${date}.`,
    checks: table,
  }, { writeDocs: flags.writeDocs });
  console.error(`[reliability] results written to ${written}`);
}
Deno.exit(failed || !checks.every((c) => c.held === c.tried) ? 1 : 0);
