/**
 * Hot tenant: begin turn for one org whose org: bucket is split into shards
 * (policy org_bucket_shards), against many orgs of one member each, at 16 and
 * 64 clients in the same run (limits high: every call admitted). Then the
 * exactness check under a binding limit: every admitted call is recorded with
 * the instant it was decided at; the most admitted in any window must not
 * exceed the limit, and the sharded bucket must admit at least 0.99 of what
 * the same limit on one row admits under the same load.
 */
import { fixed, markdownTable } from "./stats.ts";
import { type BenchContext, HOT_ORG, type ScenarioResult } from "./context.ts";

const SHARDS = 16;
const LIMIT = 600;
const WINDOW = 2;
const USER = `('00000000-0000-4000-9000-' || lpad(cast(:u as text), 12, '0'))::uuid`;
const MANY_ORG = `('00000000-0000-4000-b000-' || lpad(cast(:u as text), 12, '0'))::uuid`;
const MANY_USER = `('00000000-0000-4000-a000-' || lpad(cast(:u as text), 12, '0'))::uuid`;

const call = (org: string, user: string) =>
  `select public.agent_begin_turn(${org}, ${user}, '10.1.0.' || cast(:ip as text), 'app', null, 1000000, 1000000, 1000000, 60, 20, false);`;

// Records the decision instant (p_now = now()) of every admitted call.
const recorded = `insert into public.bench_admitted (at)
  select now() where public.agent_begin_turn('${HOT_ORG}'::uuid, ${USER}, '10.1.0.' || cast(:ip as text), 'app', null,
    1000000, 1000000, 1000000, 60, 20, false) ->> 'outcome' = 'ok';`;

async function rate(ctx: BenchContext, name: string, clients: number, sql: string) {
  const script = `${ctx.work}/hot-${name}-${clients}.sql`;
  await Deno.writeTextFile(script, `\\set u random(1, 1000)\n\\set ip random(1, 250)\n${sql}\n`);
  const out = await ctx.pgbench(clients, script, ["-M", "prepared"]);
  const r = Number(/tps = ([\d.]+)/.exec(out)?.[1] ?? NaN);
  if (!Number.isFinite(r)) throw new Error(`pgbench ${name} @${clients}: ${out.slice(-600)}`);
  ctx.log(`hot tenant ${name} @${clients}: ${Math.round(r)}/s`);
  return r;
}

async function setShards(ctx: BenchContext, shards: number | null, limit: number | null) {
  await ctx.sql`delete from ops.agent_policies where org_id = ${HOT_ORG}`;
  await ctx.sql`delete from ops.rate_limits where bucket_key like ${"org:" + HOT_ORG + "%"}`;
  if (shards === null && limit === null) return;
  await ctx
    .sql`insert into ops.agent_policies (org_id, org_bucket_shards, org_max_requests, org_window_seconds)
                values (${HOT_ORG}, ${shards}, ${limit}, ${limit === null ? null : WINDOW})`;
}

/** Admitted calls, and the most admitted in any WINDOW-second interval. */
async function exactness(ctx: BenchContext, shards: number) {
  await setShards(ctx, shards, LIMIT);
  await ctx.sql`truncate public.bench_admitted`;
  await rate(ctx, `limited-k${shards}`, 16, recorded);
  const [r] = await ctx.sql`select count(*)::int as admitted,
      (select max(n) from (select count(*) over (order by at range between current row and
         ${
    WINDOW + " seconds"
  }::interval - interval '1 microsecond' following) as n from public.bench_admitted) w)::int as peak
    from public.bench_admitted`;
  return { admitted: r!.admitted as number, peak: r!.peak as number };
}

export async function hotTenant(ctx: BenchContext): Promise<ScenarioResult> {
  await ctx.sql`create table if not exists public.bench_admitted (at timestamptz not null)`;
  const many: Record<number, number> = {}, hot: Record<number, number> = {};
  const plain: Record<number, number> = {};
  for (const clients of [16, 64]) {
    await setShards(ctx, null, null);
    many[clients] = await rate(ctx, "many-orgs", clients, call(MANY_ORG, MANY_USER));
    plain[clients] = await rate(ctx, "one-row", clients, call(`'${HOT_ORG}'::uuid`, USER));
    await setShards(ctx, SHARDS, null);
    hot[clients] = await rate(ctx, `k${SHARDS}`, clients, call(`'${HOT_ORG}'::uuid`, USER));
  }
  const one = await exactness(ctx, 1);
  const sharded = await exactness(ctx, SHARDS);
  await setShards(ctx, null, null);
  const share = (c: number) => hot[c]! / many[c]!;
  return {
    sections: {
      "hot-tenant": markdownTable(
        [
          "clients",
          "many orgs calls/s",
          "hot org, one row",
          "hot org, 16 shards",
          "shards of many orgs",
        ],
        [16, 64].map((c) => [
          c,
          Math.round(many[c]!),
          Math.round(plain[c]!),
          Math.round(hot[c]!),
          fixed(share(c)),
        ]),
      ) + "\n\n" + markdownTable(
        ["hot org, limit 600 per 2 s, 16 clients", "admitted", "most in any 2 s"],
        [["one row", one.admitted, one.peak], [`${SHARDS} shards`, sharded.admitted, sharded.peak]],
      ),
    },
    targets: [
      ...[16, 64].map((c) => ({
        target: `begin turn, one hot org (${SHARDS} shards), ${c} clients ≥ 0.9 of many orgs`,
        measured: `${Math.round(hot[c]!)}/s = ${fixed(share(c))} of ${Math.round(many[c]!)}/s`,
        met: share(c) >= 0.9,
      })),
      {
        target:
          `sharded bucket exact: most admitted in any ${WINDOW} s ≤ ${LIMIT}, admitted ≥ 0.99 of one row's`,
        measured: `peak ${sharded.peak}, ${sharded.admitted} admitted vs ${one.admitted} (${
          fixed(sharded.admitted / one.admitted)
        })`,
        met: sharded.peak <= LIMIT && sharded.admitted >= 0.99 * one.admitted,
      },
    ],
  };
}
