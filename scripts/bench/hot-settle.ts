/**
 * Hot settlement: what one busy org costs after the model, and with token
 * quotas before it. Two pgbench scripts, each at 16 and 64 clients, for many
 * orgs of one member each, the hot org with one row (org_bucket_shards
 * unset) and the hot org with 64 shards (what ops.autoshard_org_buckets gives a tenant over 3,200 turns/s, and the most a policy allows), in the same run:
 *
 *   finish: agent_finish_turn with a usage row (session save + settlement:
 *           the org's token and spend counters), no quota.
 *   quota:  a turn under an org token quota: agent_begin_turn reserving its
 *           worst case (the admission lock, the counters and reservations
 *           read), then agent_finish_turn settling it (two transactions).
 *
 * Limits high: every call admitted. Each rate is a run's last 3 s, after 3 s
 * that warm its new connections; with the full profile each figure is the
 * median of three runs taken in turn with the others. Then the exactness check: over the whole
 * scenario the hot org's settled counters (summed over their shards) grew by
 * exactly the tokens and the billed rows of its usage rows.
 */
import { fixed, markdownTable, median, pgbenchTps, type Steady, steadyArgs } from "./stats.ts";
import { type BenchContext, HOT_ORG, type ScenarioResult } from "./context.ts";

const SHARDS = 64;
const CLIENTS = [16, 64];
const ROUNDS = 3;
/** Each run: 3 s to warm its new connections (they compile the functions), then 3 s measured. */
const STEADY: Steady = { warm: 3, measured: 3 };
const HOT_USER = `('00000000-0000-4000-9000-' || lpad(cast(:u as text), 12, '0'))::uuid`;
const MANY_ORG = `('00000000-0000-4000-b000-' || lpad(cast(:u as text), 12, '0'))::uuid`;
const MANY_USER = `('00000000-0000-4000-a000-' || lpad(cast(:u as text), 12, '0'))::uuid`;
const SESSION = `('00000000-0000-4000-d000-' || lpad(cast(:u * 10 + :k as text), 12, '0'))::uuid`;
const USAGE_METADATA = `'{"store": "supabase", "stream": false, "client_ip": "10.1.0.7"}'::jsonb`;

const finish = (org: string, user: string) =>
  `select public.agent_finish_turn(${SESSION}, ${org}, ${user}, 'app', 'How do I join a group?',
  'An answer of about the length a savings-group member gets.', 86400, 20,
  jsonb_build_object('request_id', 'hs-' || :r, 'org_id', ${org}, 'user_id', ${user}, 'session_id', ${SESSION},
    'channel', 'app', 'model', 'gpt-4.1-mini', 'prompt_tokens', 60, 'completion_tokens', 25, 'total_tokens', 85,
    'latency_ms', 800, 'success', true, 'metadata', ${USAGE_METADATA}));`;

const quotaTurn = (org: string, user: string) =>
  `select public.agent_begin_turn(${org}, ${user}, '10.1.0.' || cast(:ip as text), 'app', null,
  1000000, 1000000, 1000000, 60, 20, false, null, 'hs-' || :r, 2000, 'gpt-4.1-mini');
${finish(org, user)}`;

const SCRIPTS = { finish, quota: quotaTurn };
type Script = keyof typeof SCRIPTS;

async function rate(ctx: BenchContext, name: string, clients: number, sql: string) {
  const script = `${ctx.work}/hot-settle-${name}-${clients}.sql`;
  await Deno.writeTextFile(
    script,
    `\\set u random(1, 1000)\n\\set k random(1, 10)\n\\set ip random(1, 250)\n` +
      `\\set r random(1, 9000000000000000)\n${sql}\n`,
  );
  const out = await ctx.pgbench(clients, script, ["-M", "prepared", ...steadyArgs(STEADY)]);
  const r = pgbenchTps(out, STEADY);
  if (!Number.isFinite(r)) throw new Error(`pgbench ${name} @${clients}: ${out.slice(-600)}`);
  ctx.log(`hot settle ${name} @${clients}: ${Math.round(r)}/s`);
  return r;
}

/** The hot org's policy: K shards (null: none), and the day quota every org gets from the global row. */
async function setShards(ctx: BenchContext, shards: number | null) {
  await ctx.sql`delete from ops.agent_policies where org_id = ${HOT_ORG}`;
  if (shards !== null) {
    await ctx
      .sql`insert into ops.agent_policies (org_id, org_bucket_shards) values (${HOT_ORG}, ${shards})`;
  }
}

/** The hot org's settled tokens of the day and billed rows, from the counters and from its usage rows. */
async function hotTotals(ctx: BenchContext) {
  const [r] = await ctx.sql`select
      ops.tokens_used(${"org:" + HOT_ORG + ":day"}, 86400)::bigint as counted_tokens,
      (select coalesce(sum(c.billed_events), 0) from ops.spend_counters c where c.org_id = ${HOT_ORG})::bigint
        as counted_rows,
      (select coalesce(sum(e.total_tokens), 0) from public.agent_usage_events e
        where e.org_id = ${HOT_ORG} and e.created_at > now() - interval '1 day')::bigint as logged_tokens,
      (select count(*) from public.agent_usage_events e where e.org_id = ${HOT_ORG})::bigint as logged_rows`;
  return {
    counted: [Number(r!.counted_tokens), Number(r!.counted_rows)],
    logged: [Number(r!.logged_tokens), Number(r!.logged_rows)],
  };
}

export async function hotSettle(ctx: BenchContext): Promise<ScenarioResult> {
  // A day quota for every org (the global row), high enough to admit every call.
  await ctx.sql`delete from ops.agent_policies where org_id is null and channel is null`;
  await ctx.sql`insert into ops.agent_policies (org_tokens_per_day) values (2000000000)`;
  const before = await hotTotals(ctx);
  const rates: Record<string, number> = {};
  // On a shared machine the load moves between runs: the three configurations
  // are measured in turn, ROUNDS times, and the median of each is reported.
  const rounds = ctx.profile.name === "full" ? ROUNDS : 1;
  const runs: Record<string, number[]> = {};
  const measure = async (key: string, name: string, clients: number, sql: string) => {
    (runs[key] ??= []).push(await rate(ctx, name, clients, sql));
  };
  try {
    for (let round = 0; round < rounds; round++) {
      for (const script of Object.keys(SCRIPTS) as Script[]) {
        const sql = SCRIPTS[script];
        for (const clients of CLIENTS) {
          await setShards(ctx, null);
          await measure(
            `${script} many ${clients}`,
            `${script}-many`,
            clients,
            sql(MANY_ORG, MANY_USER),
          );
          const hot = sql(`'${HOT_ORG}'::uuid`, HOT_USER);
          await measure(`${script} one ${clients}`, `${script}-one-row`, clients, hot);
          await setShards(ctx, SHARDS);
          await measure(`${script} k ${clients}`, `${script}-k${SHARDS}`, clients, hot);
        }
      }
    }
  } finally {
    await setShards(ctx, null);
    await ctx.sql`delete from ops.agent_policies where org_id is null and channel is null`;
  }
  for (const [key, values] of Object.entries(runs)) rates[key] = median(values);
  const after = await hotTotals(ctx);
  const grew = (which: "counted" | "logged", i: number) => after[which][i]! - before[which][i]!;
  const exact = grew("counted", 0) === grew("logged", 0) &&
    grew("counted", 1) === grew("logged", 1);
  const share = (script: Script, c: number) =>
    rates[`${script} k ${c}`]! / rates[`${script} many ${c}`]!;
  const label = { finish: "finish turn (usage row)", quota: "turn under a token quota" };
  return {
    sections: {
      "hot-settle": markdownTable(
        [
          "calls",
          "clients",
          "many orgs /s",
          "hot org, one row",
          `hot org, ${SHARDS} shards`,
          "shards of many orgs",
        ],
        (Object.keys(SCRIPTS) as Script[]).flatMap((script) =>
          CLIENTS.map((c) => [
            label[script],
            c,
            Math.round(rates[`${script} many ${c}`]!),
            Math.round(rates[`${script} one ${c}`]!),
            Math.round(rates[`${script} k ${c}`]!),
            fixed(share(script, c)),
          ])
        ),
      ) +
        `\n\nHot org's counters over the scenario: ${grew("counted", 0)} tokens and ${
          grew("counted", 1)
        } billed rows settled; its usage rows: ${grew("logged", 0)} tokens, ${
          grew("logged", 1)
        } rows.`,
    },
    targets: [
      ...(Object.keys(SCRIPTS) as Script[]).flatMap((script) =>
        CLIENTS.map((c) => ({
          target: `${
            label[script]
          }, one hot org (${SHARDS} shards), ${c} clients ≥ 0.9 of many orgs`,
          measured: `${Math.round(rates[`${script} k ${c}`]!)}/s = ${fixed(share(script, c))} of ${
            Math.round(rates[`${script} many ${c}`]!)
          }/s`,
          met: share(script, c) >= 0.9,
        }))
      ),
      {
        target:
          "sharded settlement exact: the hot org's counters grew by its usage rows' tokens and rows",
        measured: `${grew("counted", 0)} = ${grew("logged", 0)} tokens, ${grew("counted", 1)} = ${
          grew("logged", 1)
        } rows`,
        met: exact,
      },
    ],
  };
}
