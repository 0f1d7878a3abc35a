/**
 * The check behind "each migration calls only what an earlier one defines"
 * (supabase/tests/support/migration-order.ts, run after every migration by
 * `deno task test`'s pgTAP phase): it names a plpgsql body or a pg_cron
 * command calling what does not exist yet, and nothing once it does.
 * Runs in a database of its own on the test server.
 */
import postgres from "postgres";
import { assertEquals } from "./assert.ts";
import { testUrls } from "../support/function-harness.ts";
import { unresolvedReferences } from "../support/migration-order.ts";

Deno.test("migration order: a body calling a later migration's function is named until that function exists", async () => {
  const admin = postgres(testUrls().databaseUrl, { max: 1, onnotice: () => {} });
  const name = `migration_order_${crypto.randomUUID().replaceAll("-", "")}`;
  await admin.unsafe(`create database ${name}`);
  const url = new URL(testUrls().databaseUrl);
  url.pathname = `/${name}`;
  const sql = postgres(url.toString(), { max: 1, onnotice: () => {} });
  try {
    // "Migration 1": a plpgsql body (not checked by Postgres at creation)
    // calls ops.settle(), and a comment names ops.later_thing (ignored).
    await sql.unsafe(`
      create schema ops;
      create table ops.events (id int);
      create function ops.log_event() returns void language plpgsql as $$
      begin
        -- the settlement (ops.later_thing) comes later
        insert into ops.events values (1);
        perform ops.settle(1);
      end $$;`);
    assertEquals(await unresolvedReferences(url.toString()), ["ops.log_event() -> ops.settle"]);

    // "Migration 2" defines it: nothing is left unresolved.
    await sql.unsafe(
      `create function ops.settle(p integer) returns void language sql as $$ select $$;`,
    );
    assertEquals(await unresolvedReferences(url.toString()), []);
  } finally {
    await sql.end({ timeout: 1 });
    await admin.unsafe(`drop database ${name} with (force)`);
    await admin.end({ timeout: 1 });
  }
});
