/**
 * The Postgres functions under real concurrency: many connections at once
 * against one bucket, one session, one token quota and one enforced budget.
 * Exactly N admitted, nothing lost, a budget overshot by one turn at most.
 */
import postgres from "postgres";
import { assertEquals } from "./assert.ts";
import { withPool as withPoolOf } from "../support/test-helpers.ts";
import { sqlLiteral } from "../../functions/agent-chat/database.ts";

const CONNECTIONS = 64;

const withPool = (fn: (sql: postgres.Sql) => Promise<void>) => withPoolOf(CONNECTIONS, fn);

Deno.test("begin turn: 1,000 calls over 64 connections at a user limit of 100 admit exactly 100", () =>
  withPool(async (sql) => {
    const org = crypto.randomUUID();
    const user = crypto.randomUUID();
    await sql`insert into auth.users (id) values (${user})`;
    await sql`insert into public.org_memberships (org_id, user_id) values (${org}, ${user})`;
    const now = new Date().toISOString();
    // Addresses no other test uses (IPv6 documentation prefix, random per run).
    const ipPrefix = `2001:db8:${Math.floor(Math.random() * 0xffff).toString(16)}::`;
    const outcomes = await Promise.all(
      Array.from({ length: 1000 }, (_, i) =>
        sql`select public.agent_begin_turn(
            p_org_id => ${org}::uuid, p_user_id => ${user}::uuid, p_client_ip => ${
          ipPrefix + (i % 250)
        },
            p_org_limit => 1000, p_user_limit => 100, p_ip_limit => 1000, p_window_seconds => 60,
            p_now => ${now}::timestamptz) ->> 'outcome' as outcome`.then((r) =>
          r[0]!.outcome as string
        )),
    );
    assertEquals(outcomes.filter((o) => o === "ok").length, 100);
    assertEquals(outcomes.filter((o) => o === "rate_limit").length, 900);
    const [org_] = await sql`select slot_total from ops.rate_limits where bucket_key = ${
      "org:" + org
    }`;
    assertEquals(org_!.slot_total, 100, "refused calls consumed nothing in the org bucket");
    const [ipSum] =
      await sql`select sum(slot_total)::int as n from ops.rate_limits where bucket_key like ${
        "ip:" + ipPrefix + "%"
      }`;
    assertEquals(ipSum!.n, 100, "nor in the ip buckets");
  }));

/** 1,000 begin-turn calls at once for one org, each reserving `reserve` tokens; their outcomes. */
async function concurrentTurns(sql: postgres.Sql, org: string, reserve: number): Promise<string[]> {
  const users = Array.from({ length: 50 }, () => crypto.randomUUID());
  await sql`insert into auth.users (id) select unnest(${users}::uuid[])`;
  await sql`insert into public.org_memberships (org_id, user_id) select ${org}::uuid, unnest(${users}::uuid[])`;
  const now = new Date().toISOString();
  return await Promise.all(
    Array.from({ length: 1000 }, (_, i) =>
      sql`select public.agent_begin_turn(
            p_org_id => ${org}::uuid, p_user_id => ${users[i % users.length]!}::uuid,
            p_org_limit => 100000, p_user_limit => 100000, p_ip_limit => 100000, p_window_seconds => 60,
            p_request_id => ${`${org}-${i}`}, p_reserve_tokens => ${reserve}, p_model => 'gpt-4.1-mini',
            p_now => ${now}::timestamptz) ->> 'outcome' as outcome`.then((r) =>
        r[0]!.outcome as string
      )),
  );
}

Deno.test("token quota: 1,000 concurrent turns reserving 1,000 tokens under a 100,000-a-minute org quota admit exactly 100", () =>
  withPool(async (sql) => {
    const org = crypto.randomUUID();
    await sql`select ops.policy_set(${org}::uuid, null, '{"org_tokens_per_minute": 100000}', 'test')`;
    const outcomes = await concurrentTurns(sql, org, 1000);
    assertEquals(outcomes.filter((o) => o === "ok").length, 100);
    assertEquals(outcomes.filter((o) => o === "rate_limit").length, 900);
    const [r] = await sql`select count(*)::int as n, sum(tokens)::int as tokens
                          from ops.token_reservations where org_id = ${org}`;
    assertEquals(r!.n, 100, "one reservation per admitted turn");
    assertEquals(r!.tokens, 100000, "never more reserved than the quota");
  }));

Deno.test("enforced budget: 1,000 concurrent turns overshoot a $0.12 budget by at most one turn's worst case", () =>
  withPool(async (sql) => {
    // 10,000 tokens at gpt-4.1-mini's highest price ($1.20 per 1M) hold $0.012 each.
    const org = crypto.randomUUID();
    await sql`select ops.budget_set(${org}::uuid, 0.12, 'enforce', 'test')`;
    const outcomes = await concurrentTurns(sql, org, 10000);
    const admitted = outcomes.filter((o) => o === "ok").length;
    assertEquals(admitted, 10, "admitted while spend + reservations were below the budget");
    assertEquals(outcomes.filter((o) => o === "budget_exceeded").length, 990);
    const [r] = await sql`select sum(usd) as usd from ops.token_reservations where org_id = ${org}`;
    const reserved = Number(r!.usd);
    if (reserved > 0.12 + 0.012 + 1e-9) {
      throw new Error(`reserved $${reserved}: overshoot beyond one turn`);
    }
  }));

Deno.test("end turn: 256 concurrent appends to one session lose nothing", () =>
  withPool(async (sql) => {
    const org = crypto.randomUUID();
    const user = crypto.randomUUID();
    const session = crypto.randomUUID();
    await Promise.all(
      Array.from(
        { length: 256 },
        (_, i) =>
          sql`select public.agent_end_turn(${session}::uuid, ${org}::uuid, ${user}::uuid, 'app',
            ${"q" + i}, ${"a" + i}, 3600, 1000)`,
      ),
    );
    const [row] = await sql`select count(*)::int as n, count(distinct content)::int as d
                            from public.agent_session_messages where session_id = ${session}`;
    assertEquals(row!.n, 512);
    assertEquals(row!.d, 512);
    const pairs =
      await sql`select role, content from public.agent_session_messages where session_id = ${session} order by id`;
    for (let i = 0; i < pairs.length; i += 2) {
      assertEquals(pairs[i]!.role, "user");
      assertEquals(
        pairs[i + 1]!.content,
        "a" + String(pairs[i]!.content).slice(1),
        "each reply follows its question",
      );
    }
  }));

Deno.test("direct transport: literals survive quotes, backslashes and unicode exactly", () =>
  withPool(async (sql) => {
    const nasty = [
      "it's",
      "\\'; drop table public.agent_sessions; --",
      "back\\\\slash\\",
      "é 中文 🙂 \u202e",
      "$$ dollar $$",
      "E'\\x41'",
      "\\n not a newline",
    ];
    for (const value of nasty) {
      const [row] = await sql.unsafe(`select ${sqlLiteral(value)}::text as v`);
      assertEquals(row!.v, value);
    }
    const [json] = await sql.unsafe(`select ${sqlLiteral({ a: "x'y\\z" })}::jsonb ->> 'a' as v`);
    assertEquals(json!.v, "x'y\\z");
  }));
