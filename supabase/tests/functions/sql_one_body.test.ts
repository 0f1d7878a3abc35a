/**
 * One SQL body per behaviour: across every migration, the statements that
 * carry a behaviour are written once and called everywhere else (STYLE.md).
 * A second copy, in a new migration too, fails here by name.
 */
import { assertEquals } from "./assert.ts";
import { listMigrations, migrationsDir } from "../support/migrate.ts";

const BEHAVIOURS: Record<string, RegExp> = {
  "the usage insert (agent_log_usage)": /insert\s+into\s+public\.agent_usage_events\b/gi,
  "the session save (agent_end_turn)": /insert\s+into\s+public\.agent_sessions\b/gi,
  "the trimming to the history cap (agent_end_turn)": /offset\s+p_max_messages/gi,
  "the price lookup (ops.model_price)": /from\s+ops\.model_prices\s+p\s+where/gi,
  "the write of the policy fields (ops.policy_set)": /insert\s+into\s+ops\.agent_policies\b/gi,
};

Deno.test("one SQL body per behaviour: each is written once across the migrations", async () => {
  const found: Record<string, string[]> = {};
  for (const file of await listMigrations()) {
    // Comments may name a statement; only code counts.
    const code = (await Deno.readTextFile(`${migrationsDir}/${file}`)).replace(/--[^\n]*/g, "");
    for (const [behaviour, pattern] of Object.entries(BEHAVIOURS)) {
      for (const _ of code.matchAll(pattern)) (found[behaviour] ??= []).push(file);
    }
  }
  const expected = Object.fromEntries(Object.keys(BEHAVIOURS).map((b) => [b, 1]));
  const counted = Object.fromEntries(
    Object.keys(BEHAVIOURS).map((b) => [b, found[b]?.length ?? 0]),
  );
  assertEquals(counted, expected, `where each is written: ${JSON.stringify(found, null, 2)}`);
});
