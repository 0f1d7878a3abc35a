/**
 * Fallbacks: the latency a fallback answer adds over a primary one (the
 * primary answers 503 at once, via the stand-in's `[[fail:503@model]]`
 * marker; a primary that times out adds AI_AGENT_OPENAI_TIMEOUT_MS instead),
 * and the primary calls the circuit breaker saves while open (the same
 * failing turns with the breaker at its defaults, 5 failures / 30 s, and
 * with it never opening).
 */
import { fixed, markdownTable, median, percentile } from "./stats.ts";
import { type BenchContext, manyOrg, type ScenarioResult } from "./context.ts";
import { functionProcess, spawnService } from "../../supabase/tests/support/local-stack.ts";

const PRIMARY = "gpt-4.1-mini";
const FALLBACK = "gpt-4.1-nano";
const FAILING = `[[fail:503@${PRIMARY}]] How do I record a contribution?`;

async function primaryCalls(ctx: BenchContext): Promise<number> {
  const res = await fetch(`${ctx.standIns.url}/requests`);
  const counts = await res.json() as { by_model: Record<string, number> };
  return counts.by_model[PRIMARY] ?? 0;
}

/** `n` sequential turns of `message` as user 1; their latencies, all checked 200 from `model`. */
async function turns(ctx: BenchContext, url: string, message: string, n: number, model: string) {
  const ms: number[] = [];
  for (let i = 0; i < n; i++) {
    const r = await ctx.post(url, ctx.tokenOf(1), { message, org_id: manyOrg(1) });
    if (r.status !== 200 || !String(r.json.model).startsWith(model)) {
      throw new Error(
        `fallbacks: expected 200 from ${model}, got ${r.status} ${JSON.stringify(r.json)}`,
      );
    }
    ms.push(r.ms);
  }
  return ms;
}

const summary = (ms: number[]) =>
  `${fixed(median(ms), 1)} ms (p95 ${fixed(percentile([...ms].sort((a, b) => a - b), 95), 1)} ms)`;

export async function fallbacks(ctx: BenchContext): Promise<ScenarioResult> {
  const n = ctx.profile.name === "quick" ? 40 : 200;
  const env = {
    ...ctx.functionEnv("supabase", "direct"),
    AI_AGENT_MODEL: PRIMARY,
    AI_AGENT_MODEL_FALLBACKS: JSON.stringify([{ model: FALLBACK }]),
    AI_AGENT_OPENAI_MAX_RETRIES: "0",
  };
  const rows: string[][] = [];
  const never = await spawnService(functionProcess, { ...env, AI_AGENT_BREAKER_FAILURES: "1000" });
  let primary: number[], handedOver: number[], calledWithout: number;
  try {
    await turns(ctx, never.url, "warm up", 5, PRIMARY);
    primary = await turns(ctx, never.url, "How do I record a contribution?", n, PRIMARY);
    const before = await primaryCalls(ctx);
    handedOver = await turns(ctx, never.url, FAILING, n, FALLBACK);
    calledWithout = (await primaryCalls(ctx)) - before;
  } finally {
    await never.stop();
  }
  const open = await spawnService(functionProcess, env);
  let skipped: number[], calledWith: number;
  try {
    await turns(ctx, open.url, "warm up", 5, PRIMARY);
    const before = await primaryCalls(ctx);
    skipped = await turns(ctx, open.url, FAILING, n, FALLBACK);
    calledWith = (await primaryCalls(ctx)) - before;
  } finally {
    await open.stop();
  }
  const added = median(handedOver) - median(primary);
  rows.push(
    [`answered by the primary`, summary(primary), "—"],
    [
      `answered by the fallback after a primary 503`,
      summary(handedOver),
      `${calledWithout} of ${n}`,
    ],
    [`answered by the fallback, primary's breaker open`, summary(skipped), `${calledWith} of ${n}`],
  );
  ctx.log(
    `fallbacks: +${fixed(added, 1)} ms median; primary calls ${calledWithout} → ${calledWith}`,
  );
  const table = markdownTable(
    ["turns (sequential, one user)", "latency median (p95)", "calls reaching the failing primary"],
    rows,
  );
  return {
    sections: {
      fallbacks: `${table}\n\nA fallback answer after a failed primary call adds ${
        fixed(added, 1)
      } ms (median) here, where the primary fails at once; with its breaker open the primary is called ${calledWith} times in ${n} turns instead of ${calledWithout} (the opening failures, then one probe per 30 s).`,
    },
    targets: [],
  };
}
