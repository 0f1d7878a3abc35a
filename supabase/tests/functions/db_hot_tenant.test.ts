/**
 * A hot tenant's sharded org: bucket under real concurrency: many
 * connections at once on one org, and K changed while turns run. Never more than the limit, no error (a deadlock would be one),
 * and at most K - 1 admissions refused early.
 */
import postgres from "postgres";
import { assert, assertEquals } from "./assert.ts";
import { withPool as withPoolOf } from "../support/test-helpers.ts";

const CONNECTIONS = 64;

const withPool = (fn: (sql: postgres.Sql) => Promise<void>) => withPoolOf(CONNECTIONS, fn);

/** An org of `members` members; their ids. */
async function org(sql: postgres.Sql, id: string, members: number): Promise<string[]> {
  const users = Array.from({ length: members }, () => crypto.randomUUID());
  await sql`insert into auth.users (id) select unnest(${users}::uuid[])`;
  await sql`insert into public.org_memberships (org_id, user_id) select ${id}::uuid, unnest(${users}::uuid[])`;
  return users;
}

/** `calls` begin-turn calls at once for the org, org limit `limit` a minute; their outcomes. */
function turns(sql: postgres.Sql, orgId: string, users: string[], calls: number, limit: number) {
  const now = new Date().toISOString();
  return Promise.all(
    Array.from({ length: calls }, (_, i) =>
      sql`select public.agent_begin_turn(
            p_org_id => ${orgId}::uuid, p_user_id => ${users[i % users.length]!}::uuid,
            p_org_limit => ${limit}, p_user_limit => 100000, p_ip_limit => 100000, p_window_seconds => 60,
            p_now => ${now}::timestamptz) ->> 'outcome' as outcome`.then((r) =>
        r[0]!.outcome as string
      )),
  );
}

/** How many calls were admitted; fails when any was neither admitted nor refused by a bucket. */
function admittedOf(outcomes: string[], message = "every call decided, none failed"): number {
  assertEquals(outcomes.filter((o) => o !== "ok" && o !== "rate_limit"), [], message);
  return outcomes.filter((o) => o === "ok").length;
}

Deno.test("sharded org bucket: 1,000 calls over 64 connections on 8 shards admit at most the limit of 100", () =>
  withPool(async (sql) => {
    const id = crypto.randomUUID();
    const users = await org(sql, id, 200);
    // K alone: the limit comes with the turns, which set the shards' shares.
    await sql`select ops.policy_set(${id}::uuid, null, '{"org_bucket_shards": 8}', 'test')`;
    const outcomes = await turns(sql, id, users, 1000, 100);
    const admitted = admittedOf(outcomes);
    assert(admitted <= 100, `${admitted} admitted: never more than the limit`);
    assert(admitted >= 100 - 7, `${admitted} admitted: at most K - 1 refused early`);
    const [rows] = await sql`select count(*)::int as n, sum(slot_total)::int as total
      from ops.rate_limits where bucket_key like ${"org:" + id + "#%"}`;
    assertEquals(rows!.total, admitted, "the shards hold exactly the admissions");
    assert(rows!.n <= 8, `${rows!.n} shard rows: at most K`);
  }));

Deno.test("sharded org bucket: shard rows gone (purged while idle) are made again at first use by 64 connections, without error, and the limit is admitted", () =>
  withPool(async (sql) => {
    const id = crypto.randomUUID();
    const users = await org(sql, id, 200);
    await sql`select ops.policy_set(${id}::uuid, null, '{"org_bucket_shards": 8}', 'test')`;
    await sql`delete from ops.rate_limits where bucket_key like ${"org:" + id + "#%"}`;
    const outcomes = await turns(sql, id, users, 1000, 100);
    const admitted = admittedOf(
      outcomes,
      "every call decided, none failed (no deadlock making the rows)",
    );
    assert(admitted <= 100, `${admitted} admitted: never more than the limit`);
    assert(admitted >= 100 - 7, `${admitted} admitted: every shard made and used`);
    const [rows] = await sql`select count(*)::int as n, sum(slot_total)::int as total
      from ops.rate_limits where bucket_key like ${"org:" + id + "#%"}`;
    assertEquals(rows!.n, 8, "the eight rows are back");
    assertEquals(rows!.total, admitted, "the shards hold exactly the admissions");
  }));

Deno.test("sharded org bucket: K changed three times while 1,000 calls run never admits past the limit", () =>
  withPool(async (sql) => {
    const id = crypto.randomUUID();
    const users = await org(sql, id, 200);
    const running = turns(sql, id, users, 1000, 100);
    for (const k of [4, 1, 16]) {
      await new Promise((resolve) => setTimeout(resolve, 20));
      await sql`select ops.policy_set(${id}::uuid, null, jsonb_build_object('org_bucket_shards', ${k}::int), 'test')`;
    }
    const outcomes = await running;
    const admitted = admittedOf(outcomes);
    assert(
      admitted <= 100,
      `${admitted} admitted across three changes of K: never more than the limit`,
    );
    const [rows] = await sql`select sum(slot_total)::int as total from ops.rate_limits
      where bucket_key = ${"org:" + id} or bucket_key like ${"org:" + id + "#%"}`;
    assertEquals(
      rows!.total,
      admitted,
      "the rows in force hold every admission, none forgotten by a change",
    );
  }));
