/**
 * Memory: resident size of the function process (direct, Supabase store,
 * concurrency 16) at the profile's checkpoints, and the V8 heap in use
 * after a full GC. V8 grows its heap to a working size over the first
 * requests; flat means no growth from the second checkpoint to the last.
 */
import { fixed } from "./stats.ts";
import type { BenchContext, ScenarioResult } from "./context.ts";
import { residentMiB } from "./processes.ts";
import { functionProcess } from "../../supabase/tests/support/local-stack.ts";

export async function memory(ctx: BenchContext): Promise<ScenarioResult> {
  const fn = await ctx.stack.spawn(functionProcess, ctx.functionEnv("supabase", "direct"), {
    denoFlags: ["--v8-flags=--expose-gc"],
  });
  const heapMiB = async () =>
    (await (await fetch(`${fn.url}/__heap`)).json()).heapUsed / 1024 / 1024;
  const rssStart = await residentMiB(fn.pid);
  let served = 0;
  const rss: Array<[number, number]> = [];
  const heap: number[] = [];
  for (const target of ctx.profile.memoryCheckpoints) {
    while (served < target) served += (await ctx.wrk(fn.url, 16, 3)).requests;
    rss.push([served, await residentMiB(fn.pid)]);
    heap.push(await heapMiB());
  }
  await fn.stop();
  const [warm, last] = [rss[1]!, rss.at(-1)!];
  const growth = last[1] - warm[1];
  ctx.log(
    `memory: start ${fixed(rssStart, 1)} MiB, ${rss.map(([n, r]) => `${n}: ${fixed(r, 1)}`)}`,
  );
  return {
    sections: {
      memory: `Resident size: ${fixed(rssStart, 1)} MiB at start, ${
        rss.map(([n, r]) => `${fixed(r, 1)} MiB after ${n} requests`).join(", ")
      }. V8 heap in use after a full garbage collection at the same points: ${
        heap.map((h) => `${fixed(h, 1)} MiB`).join(", ")
      }.`,
    },
    targets: [{
      target: `memory flat after warm-up: from ${warm[0]} to ${last[0]} requests RSS grows ≤ 5% ` +
        "and the V8 heap after a full GC ≤ 10%",
      measured: `RSS ${growth >= 0 ? "+" : ""}${fixed(growth, 1)} MiB (${
        fixed((growth / warm[1]) * 100, 1)
      }%), heap ${fixed(heap[1]!, 1)} → ${fixed(heap.at(-1)!, 1)} MiB`,
      met: growth <= 0.05 * warm[1] && heap.at(-1)! <= 1.1 * heap[1]!,
    }],
  };
}
