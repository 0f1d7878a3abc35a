/**
 * Upstream faults with a fallback configured (AI_AGENT_MODEL_FALLBACKS =
 * gpt-4.1-nano on the same stand-in, breaker never opening so every fault
 * reaches the primary): a 500, 503, 429 or a hang of the primary is answered
 * 200 by the fallback, never a 5xx; faults a fallback cannot fix keep their
 * answer (a malformed body is 502, a stream cut after its first delta ends
 * with an error event); and every request has exactly one usage row, whose
 * model is the one that answered and whose tokens bill nothing for a 5xx,
 * a 429 or a refused connection.
 */
import { parseSse } from "../../supabase/tests/support/sse.ts";
import { functionProcess } from "../../supabase/tests/support/local-stack.ts";
import { type ReliabilityContext, send, type Sent, settle, STORES } from "./context.ts";

const AREA = "openai failing with a fallback configured";
const FALLBACK_FIXES = [
  { kind: "error", status: 500 },
  { kind: "error", status: 503 },
  { kind: "error", status: 429 },
  { kind: "hang" },
];

interface Row {
  model: string;
  success: boolean;
  prompt_tokens: number | null;
  metadata: { model_attempts?: Array<{ outcome: string; billed: string }> };
}

/**
 * The usage rows of one request, found by the client request id it sent
 * (written off the response's path: waited for up to 5 s, then a moment
 * more so a duplicate would show).
 */
async function rowsOf(ctx: ReliabilityContext, sent: Sent): Promise<Row[]> {
  const read = () =>
    ctx.sql<Row[]>`select model, success, prompt_tokens, metadata
      from public.agent_usage_events where metadata ->> 'client_request_id' = ${sent.requestId}`;
  await settle(read, (rows) => rows.length > 0, 5000);
  await new Promise((r) => setTimeout(r, 100));
  return await read();
}

/** One row, from the model that answered, billing only the answer (a hang adds its prompt). */
function exactRow(rows: Row[], sent: Sent, hang: boolean): boolean {
  if (rows.length !== 1 || !rows[0]!.success) return false;
  const row = rows[0]!;
  const answer = sent.body as { model?: string; usage?: { prompt_tokens: number } } | null;
  if (row.model !== answer?.model || !answer.usage) return false;
  const attempts = row.metadata.model_attempts ?? [];
  const billedFirst = attempts[0]?.billed === (hang ? "estimated" : "none");
  const tokensExact = hang
    ? (row.prompt_tokens ?? 0) > answer.usage.prompt_tokens
    : row.prompt_tokens === answer.usage.prompt_tokens;
  return attempts.length === 2 && billedFirst && tokensExact;
}

export async function upstreamFallback(ctx: ReliabilityContext): Promise<void> {
  for (const store of STORES) {
    const fn = await ctx.stack.spawn(functionProcess, {
      ...ctx.functionEnv(store, 100_000),
      AI_AGENT_MODEL: "gpt-4.1-mini",
      AI_AGENT_MODEL_FALLBACKS: JSON.stringify([{ model: "gpt-4.1-nano" }]),
      AI_AGENT_BREAKER_FAILURES: "1000",
    });
    const answered: boolean[] = [];
    const rowsExact: boolean[] = [];
    const notes: string[] = [];
    for (let r = 0; r < ctx.profile.upstreamRounds; r++) {
      for (const [i, b] of FALLBACK_FIXES.entries()) {
        await ctx.scriptOpenAI(b);
        const m = ctx.fresh(700 + r * 10 + i);
        const sent = await send(fn.url, { message: "fallback please", org_id: m.org }, {
          authorization: `Bearer ${m.token}`,
        });
        const ok = sent.status === 200 && String(sent.body?.model).startsWith("gpt-4.1-nano");
        answered.push(ok);
        if (!ok) notes.push(`${b.kind} ${"status" in b ? b.status : ""} → ${sent.status}`);
        rowsExact.push(exactRow(await rowsOf(ctx, sent), sent, b.kind === "hang"));
      }
    }
    ctx.record(
      AREA,
      `${store}: 500/503/429/hang answered 200 by the fallback`,
      answered.length,
      answered.filter(Boolean).length,
      notes.slice(0, 2).join("; "),
    );
    ctx.record(
      AREA,
      `${store}: one usage row each, the fallback's model and tokens`,
      rowsExact.length,
      rowsExact.filter(Boolean).length,
    );
    await unfixable(ctx, fn.url, store);
    await fn.stop();
  }
}

/** What a fallback must not change: a malformed answer is 502, a cut stream an error event. */
async function unfixable(ctx: ReliabilityContext, url: string, store: string) {
  const m = ctx.fresh(790);
  await ctx.scriptOpenAI({ kind: "malformed" });
  const malformed = await send(url, { message: "x", org_id: m.org }, {
    authorization: `Bearer ${m.token}`,
  });
  await ctx.scriptOpenAI({ kind: "cut", afterChunks: 1 });
  const cut = await send(url, { message: "x", org_id: m.org, stream: true }, {
    authorization: `Bearer ${m.token}`,
  });
  const last = parseSse(cut.text).at(-1);
  const held = [
    malformed.status === 502,
    cut.status === 200 && last?.event === "error" && last.data.error.code === "openai_error",
  ];
  ctx.record(
    AREA,
    `${store}: malformed stays 502, a stream cut after its first delta ends with error`,
    2,
    held.filter(Boolean).length,
    `${malformed.status}, ${last?.event}`,
  );
}
