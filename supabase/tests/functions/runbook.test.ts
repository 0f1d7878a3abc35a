/** Every `sql` block of docs/operations.md runs, as written, against the migrated test database. */
import postgres from "postgres";
import { assert } from "./assert.ts";
import { testUrls } from "../support/function-harness.ts";

const doc = await Deno.readTextFile(new URL("../../../docs/operations.md", import.meta.url));
const blocks = [...doc.matchAll(/```sql\n([\s\S]*?)```/g)].map((m) => m[1]!);

Deno.test("runbook: docs/operations.md has SQL blocks for every section", () => {
  assert(blocks.length >= 15, `found ${blocks.length} sql blocks`);
  for (
    const needle of [
      "ops.clear_rate_limit",
      "ops.add_opt_out",
      "ops.expire_opt_out",
      "ops.monthly_cost",
      "ops.check_alerts",
    ]
  ) {
    assert(blocks.some((b) => b.includes(needle)), `a block uses ${needle}`);
  }
});

Deno.test("runbook: every SQL block runs (each in a transaction that is rolled back)", async () => {
  const sql = postgres(testUrls().databaseUrl, { max: 1, onnotice: () => {} });
  const failures: string[] = [];
  try {
    for (const [i, block] of blocks.entries()) {
      try {
        await sql.begin(async (tx) => {
          await tx.unsafe(block);
          throw new RollBack();
        });
      } catch (error) {
        if (!(error instanceof RollBack)) {
          failures.push(`block ${i + 1}:\n${block}\n→ ${(error as Error).message}`);
        }
      }
    }
  } finally {
    await sql.end();
  }
  assert(failures.length === 0, failures.join("\n\n"));
});

class RollBack extends Error {}
