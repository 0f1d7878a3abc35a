/**
 * Reconciliation: `ops reconcile --import <provider export.csv>` compares
 * what was metered (reported and estimated tokens, cost at the price
 * charged) with what the provider billed, per UTC day and model.
 */
import { assertEquals, assertMatch } from "./assert.ts";
import { testUrls } from "../support/function-harness.ts";
import { withDb } from "../support/test-helpers.ts";
import { runOps } from "../../../scripts/ops.ts";
import { parseProviderCsv } from "../../../scripts/ops/reconcile.ts";

async function ops(...argv: string[]) {
  let out = "";
  let err = "";
  const code = await runOps(
    [...argv, "--db", testUrls().databaseUrl],
    (s) => (out += s + "\n"),
    (s) => (err += s + "\n"),
  );
  return { code, out, err };
}

Deno.test("reconciliation: metered vs upstream-reported vs an imported provider export, per day and model", async () => {
  const model = `recon-${crypto.randomUUID().slice(0, 8)}`;
  const day = "2026-03-02";
  await withDb(async (sql) => {
    const row = (id: string, prompt: number, completion: number, estimated: boolean) =>
      sql`select public.agent_log_usage(${
        sql.json({
          request_id: id,
          org_id: crypto.randomUUID(),
          user_id: crypto.randomUUID(),
          model,
          prompt_tokens: prompt,
          completion_tokens: completion,
          total_tokens: prompt + completion,
          latency_ms: 5,
          success: true,
          metadata: estimated ? { tokens_estimated: true } : {},
          created_at: `${day}T10:00:00Z`,
        })
      })`;
    await row(`${model}-1`, 1000, 500, false);
    await row(`${model}-2`, 300, 0, true);
  });
  const csv = await Deno.makeTempFile({ suffix: ".csv" });
  try {
    // Two rows of one day and model (two projects), as the export lists them; Unix seconds.
    const start = Date.parse(`${day}T00:00:00Z`) / 1000;
    await Deno.writeTextFile(
      csv,
      "start_time,model,num_model_requests,input_tokens,input_cached_tokens,output_tokens\n" +
        `${start},${model},1,900,0,400\n${start},"${model}",1,400,0,100\n`,
    );
    const r = await ops("reconcile", "--from", day, "--to", day, "--import", csv, "--json");
    assertEquals(r.code, 0, r.err);
    const [line] = JSON.parse(r.out).filter((x: { model: string }) => x.model === model);
    assertEquals(
      [line.requests, line.metered_prompt_tokens, line.metered_completion_tokens],
      [2, 1300, 500],
    );
    assertEquals([line.reported_tokens, line.estimated_tokens], [1500, 300]);
    assertEquals(
      [line.provider_requests, line.provider_input_tokens, line.provider_output_tokens],
      [
        2,
        1300,
        500,
      ],
    );
    assertEquals(line.token_difference, 0, "the bill is proven for that day and model");
    const text = await ops("reconcile", "--from", day, "--to", day);
    assertMatch(text.out, /token_difference/);
  } finally {
    await Deno.remove(csv);
  }
});

Deno.test("reconciliation: an export without a model column, or with a bad number, is a one-line error", async () => {
  const csv = await Deno.makeTempFile({ suffix: ".csv" });
  try {
    await Deno.writeTextFile(csv, "date,tokens\n2026-03-02,5\n");
    const r = await ops("reconcile", "--import", csv);
    assertEquals(r.code, 2);
    assertMatch(r.err, /no model column/);
  } finally {
    await Deno.remove(csv);
  }
  let error = "";
  try {
    parseProviderCsv("date,model,input_tokens\n2026-03-02,m,lots\n");
  } catch (e) {
    error = String(e);
  }
  assertMatch(error, /line 2: input_tokens: not a number/);
});
