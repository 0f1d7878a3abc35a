/**
 * `deno run -A scripts/bench/profile.ts [--transport direct|rpc] [--store supabase|redis]
 * [--seconds 10] [--client sdk|fetch]`: where the function's CPU goes. Runs the function with
 * V8's sampling profiler on the benchmark's local stack, loads it with wrk
 * at concurrency 16, and prints the CPU per request from /proc next to the
 * top self-time functions, grouped by package (openai, postgres, jose, zod,
 * agent-chat, deno runtime, GC). The raw profile stays in .local/profiles/
 * for Chrome DevTools.
 */
import { commandLine } from "../cli.ts";
import { startLocalStack } from "../../supabase/tests/support/local-stack.ts";
import { createContext, PROFILES, type Store, type Transport } from "./context.ts";
import { functionProcess } from "../../supabase/tests/support/local-stack.ts";

const flags = commandLine({
  usage:
    "usage: deno run -A scripts/bench/profile.ts [--transport direct|rpc] [--store supabase|redis] [--seconds 10] [--client sdk|fetch]",
  options: {
    transport: { type: "string" },
    store: { type: "string" },
    seconds: { type: "string" },
    client: { type: "string" },
  },
}, ({ values }) => ({
  transport: (values.transport ?? "direct") as Transport,
  store: (values.store ?? "supabase") as Store,
  seconds: Number(values.seconds ?? 10),
  client: values.client ?? "fetch",
}));

interface ProfileNode {
  id: number;
  callFrame: { functionName: string; url: string; lineNumber: number };
}
interface CpuProfile {
  nodes: ProfileNode[];
  samples: number[];
  timeDeltas: number[];
}

/** Which package a frame belongs to, from its URL. */
function packageOf(url: string, name: string): string {
  if (!url) return name.startsWith("(") ? name : "(native)";
  const npm = /registry\.npmjs\.org\/((?:@[^/]+\/)?[^/]+)\//.exec(url);
  if (npm) return npm[1]!;
  if (url.includes("/supabase/functions/")) return "agent-chat";
  if (url.startsWith("ext:")) return "deno runtime";
  return url.replace(/^.*\//, "");
}

function summarise(profile: CpuProfile, requests: number) {
  const byId = new Map(profile.nodes.map((n) => [n.id, n]));
  const self = new Map<number, number>();
  profile.samples.forEach((id, i) => self.set(id, (self.get(id) ?? 0) + profile.timeDeltas[i]!));
  const byPackage = new Map<string, number>();
  const byFunction = new Map<string, number>();
  for (const [id, us] of self) {
    const { functionName, url, lineNumber } = byId.get(id)!.callFrame;
    if (functionName === "(idle)" || functionName === "(program)") continue;
    const pkg = packageOf(url, functionName);
    byPackage.set(pkg, (byPackage.get(pkg) ?? 0) + us);
    const key = `${functionName || "(anonymous)"} ${pkg}:${lineNumber + 1}`;
    byFunction.set(key, (byFunction.get(key) ?? 0) + us);
  }
  const busy = [...byPackage.values()].reduce((a, b) => a + b, 0);
  const rows = (m: Map<string, number>, n: number) =>
    [...m].sort((a, b) => b[1] - a[1]).slice(0, n).map(([k, us]) =>
      `  ${(us / 1000 / requests).toFixed(3).padStart(7)} ms/req  ${
        (100 * us / busy).toFixed(1).padStart(5)
      }%  ${k}`
    );
  return [
    `JS thread busy: ${(busy / 1000 / requests).toFixed(3)} ms per request`,
    "by package:",
    ...rows(byPackage, 12),
    "top functions (self time):",
    ...rows(byFunction, 25),
  ].join("\n");
}

const stack = await startLocalStack({ pgCron: false, postgres: { fast: false } });
try {
  const ctx = await createContext(stack, PROFILES.quick);
  const dir = `${Deno.cwd()}/.local/profiles`;
  await Deno.mkdir(dir, { recursive: true });
  const before = new Set([...Deno.readDirSync(dir)].map((e) => e.name));
  const env = {
    ...ctx.functionEnv(flags.store, flags.transport),
    AI_AGENT_OPENAI_CLIENT: flags.client,
  };
  const fn = await stack.spawn(functionProcess, env, {
    denoFlags: ["--cpu-prof", `--cpu-prof-dir=${dir}`],
  });
  const warm = await ctx.wrk(fn.url, 16, 2); // warm-up (the profile holds it too)
  const cpu0 = await ctx.cpuMs(fn.pid);
  const run = await ctx.wrk(fn.url, 16, flags.seconds);
  const cpu = (await ctx.cpuMs(fn.pid)) - cpu0;
  await fn.stop();
  const file = [...Deno.readDirSync(dir)].map((e) => e.name).find((n) => !before.has(n));
  if (!file) throw new Error("no profile written");
  const profile = JSON.parse(await Deno.readTextFile(`${dir}/${file}`)) as CpuProfile;
  const total = warm.requests + run.requests;
  console.log(
    `${flags.transport}/${flags.store} (${flags.client}): ${run.requests} requests in ${flags.seconds} s, ` +
      `function CPU ${(cpu / run.requests).toFixed(3)} ms per request (/proc)`,
  );
  console.log(summarise(profile, total));
  console.log(`profile: ${dir}/${file}`);
} finally {
  await stack.stop();
}
