/**
 * Retention as it runs in production: `call ops.purge_nightly()` (what
 * pg_cron runs, committing between bounded rounds) and `npm run ops --
 * purge` (the same loop from the CLI) scrub back-dated usage rows that hold
 * a street address and a phone number in the client's metadata, keep the
 * IP's address block, delete rows past 13 months, and leave fresh rows alone.
 */
import { assertEquals } from "./assert.ts";
import { testUrls } from "../support/function-harness.ts";
import { withDb } from "../support/test-helpers.ts";
import { runOps } from "../../../scripts/ops.ts";
import { addressBlock, normalizeIp } from "../../functions/_shared/client-ip.ts";

const personal = {
  client_ip: "198.51.100.23",
  client: { address: "KG 11 Ave 7, Kigali", phone: "+250788123456" },
};

async function seed(sql: Parameters<Parameters<typeof withDb>[0]>[0], tag: string) {
  const org = crypto.randomUUID();
  // More than one round (batch_rows = 2 for this test's rows) so the loop is exercised.
  for (const [name, days] of [["fresh", 1], ["a", 45], ["b", 46], ["c", 47], ["ancient", 420]]) {
    await sql`insert into public.agent_usage_events (request_id, org_id, total_tokens, success, metadata, created_at)
      values (${`${tag}-${name}`}, ${org}, 7, true, ${
      sql.json(personal)
    }, now() - make_interval(days => ${days}))`;
  }
}

async function rows(sql: Parameters<Parameters<typeof withDb>[0]>[0], tag: string) {
  const found = await sql<Array<{ request_id: string; metadata: Record<string, unknown> }>>`
    select request_id, metadata from public.agent_usage_events where request_id like ${tag + "-%"}`;
  return Object.fromEntries(found.map((r) => [r.request_id.slice(tag.length + 1), r.metadata]));
}

for (const how of ["pg_cron's call ops.purge_nightly()", "npm run ops -- purge"] as const) {
  Deno.test(`retention (${how}): back-dated personal fields are scrubbed, old rows deleted`, () =>
    withDb(async (sql) => {
      const tag = `retention-${crypto.randomUUID()}`;
      await seed(sql, tag);
      const [before] = await sql`select batch_rows from ops.retention_settings`;
      await sql`update ops.retention_settings set batch_rows = 2`;
      try {
        if (how.startsWith("pg_cron")) {
          // The simple query protocol, as pg_cron sends it (a procedure may commit only there).
          await sql.unsafe("call ops.purge_nightly()").simple();
        } else {
          let err = "";
          const code = await runOps(
            ["purge", "--json", "--db", testUrls().databaseUrl],
            () => {},
            (s) => (err += s),
          );
          assertEquals(code, 0, err);
        }
      } finally {
        await sql`update ops.retention_settings set batch_rows = ${before!.batch_rows}`;
      }
      const kept = await rows(sql, tag);
      assertEquals(
        Object.keys(kept).sort(),
        ["a", "b", "c", "fresh"],
        "the 420-day-old row is gone",
      );
      assertEquals(kept.fresh, personal, "a day-old row is untouched");
      for (const name of ["a", "b", "c"]) {
        assertEquals(
          kept[name],
          { client_ip_block: "198.51.100.0/24", personal_removed: true },
          `${name}: no address, phone number or IP; the address block stays`,
        );
      }
    }));
}

Deno.test("retention: ops.address_block writes an IPv6 block as _shared/client-ip.ts does, IPv4 as its /24", () =>
  withDb(async (sql) => {
    const v6 = [
      "2001:db8::1",
      "2001:0db8:0000:0012:abcd::1",
      "::1",
      "fe80::1:2:3:4",
      "2001:db8:a:b:c:d:e:f",
    ];
    for (const raw of v6) {
      const ip = normalizeIp(raw)!;
      const [row] = await sql`select ops.address_block(${ip}) as block`;
      assertEquals(row!.block, addressBlock(ip), ip);
    }
    for (const ip of ["10.20.30.40", "255.255.255.255", "::ffff:192.0.2.7"]) {
      const [row] = await sql`select ops.address_block(${ip}) as block`;
      const v4 = normalizeIp(ip)!;
      assertEquals(row!.block, `${v4.split(".").slice(0, 3).join(".")}.0/24`, ip);
    }
  }));
