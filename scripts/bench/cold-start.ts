/** Cold start: process start (`deno run`, modules cached) to the first 200 answer, three runs. */
import { fixed, median } from "./stats.ts";
import { type BenchContext, manyOrg, type ScenarioResult } from "./context.ts";
import { functionProcess, spawnService } from "../../supabase/tests/support/local-stack.ts";

export async function coldStart(ctx: BenchContext): Promise<ScenarioResult> {
  const runs: number[] = [];
  for (let i = 0; i < 3; i++) {
    const started = performance.now();
    const fn = await spawnService(functionProcess, ctx.functionEnv("supabase", "direct"));
    try {
      while (true) {
        const r = await ctx.post(fn.url, ctx.tokenOf(1), { message: "hi", org_id: manyOrg(1) })
          .catch(() => ({ status: 0 }));
        if (r.status === 200) break;
        await new Promise((res) => setTimeout(res, 5));
      }
      runs.push(performance.now() - started);
    } finally {
      await fn.stop();
    }
  }
  ctx.log(`cold start: ${runs.map((c) => fixed(c, 0)).join(", ")} ms`);
  return {
    sections: {
      "cold-start": `Process start to the first 200 answer: ${
        runs.map((c) => `${fixed(c, 0)} ms`).join(", ")
      } (median ${fixed(median(runs), 0)} ms).`,
    },
    targets: [],
  };
}
