/**
 * Upstream: the OpenAI stand-in answers 500, 503, 429, a malformed body,
 * hangs past the function's timeout, or cuts a stream; each is a 502
 * openai_error (an SSE error event for the stream) within 10 s, and the
 * function answers again once the upstream recovers.
 */
import { parseSse } from "../../supabase/tests/support/sse.ts";
import { type ReliabilityContext, send } from "./context.ts";

export async function upstream(ctx: ReliabilityContext): Promise<void> {
  const url = ctx.roomy.supabase.url;
  const behaviours = [
    { kind: "error", status: 500 },
    { kind: "error", status: 503 },
    { kind: "error", status: 429 },
    { kind: "malformed" },
    { kind: "hang" },
    { kind: "cut", afterChunks: 1 },
  ];
  const rounds = ctx.profile.upstreamRounds;
  const outcomes: Array<{ ok: boolean; ms: number; what: string }> = [];
  for (let r = 0; r < rounds; r++) {
    for (const b of behaviours) {
      await ctx.scriptOpenAI(b);
      const m = ctx.fresh(r * 10 + outcomes.length);
      const stream = b.kind === "cut";
      const res = await send(url, { message: "upstream fault", org_id: m.org, stream }, {
        authorization: `Bearer ${m.token}`,
      });
      const ok = stream
        ? res.status === 200 && parseSse(res.text).at(-1)?.event === "error" &&
          parseSse(res.text).at(-1)?.data.error.code === "openai_error"
        : res.status === 502 &&
          (res.body?.error as { code?: string } | undefined)?.code === "openai_error";
      outcomes.push({
        ok: ok && res.ms < 10_000,
        ms: res.ms,
        what: `${b.kind}${"status" in b ? ` ${b.status}` : ""} → ${res.status} in ${
          res.ms.toFixed(0)
        } ms ${res.text.slice(0, 60)}`,
      });
    }
  }
  ctx.record(
    "openai failing, hanging, cutting streams",
    "502 openai_error (or an SSE error event) within 10 s",
    outcomes.length,
    outcomes.filter((o) => o.ok).length,
    `slowest ${Math.max(...outcomes.map((o) => o.ms)).toFixed(0)} ms ${
      outcomes.filter((o) => !o.ok).slice(0, 2).map((o) => o.what).join("; ")
    }`,
  );
  const after = [];
  for (let i = 0; i < 5; i++) {
    const m = ctx.fresh(500 + i);
    after.push(
      await send(url, { message: "after", org_id: m.org }, {
        authorization: `Bearer ${m.token}`,
      }),
    );
  }
  ctx.record(
    "openai failing, hanging, cutting streams",
    "answers again once the upstream recovers",
    after.length,
    after.filter((r) => r.status === 200).length,
  );
}
