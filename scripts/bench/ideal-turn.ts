/**
 * The turn's floor: Postgres CPU per answered turn of the real calls (begin
 * turn with the history, then finish turn with the usage row) against an
 * "ideal turn" in the same run: the same lookups (policies, membership,
 * opt-outs, session, newest 20 messages), the three bucket counters as one
 * upsert, the session upsert, the two messages, the trim and the usage insert
 * (with one spend-counter upsert for its settlement), as plain statements.
 * Both as pgbench scripts, prepared, 16 clients, 1,000 orgs of one member,
 * 100 sessions per member; CPU of every Postgres process over the run.
 *
 * The ideal turn runs twice: statement by statement (a round trip each, as
 * an application would send them) and in pipeline mode (each transaction's
 * statements sent at once, as the two function calls are: the floor without
 * the per-statement round trips). Beside them, two pgbench TPC-B
 * transactions (the built-in script, scale 16), the yardstick.
 */
import { fixed, markdownTable } from "./stats.ts";
import type { BenchContext, ScenarioResult } from "./context.ts";

const CLIENTS = 16;
const ORG = `('00000000-0000-4000-b000-' || lpad(cast(:u as text), 12, '0'))::uuid`;
const USER = `('00000000-0000-4000-a000-' || lpad(cast(:u as text), 12, '0'))::uuid`;
const SESSION = `('00000000-0000-4000-c000-' || lpad(cast(:u * 100 + :k as text), 12, '0'))::uuid`;
const ANSWER =
  "'An answer of about the length a savings-group member gets, in one short paragraph.'";
const USAGE_METADATA = `'{"store": "supabase", "stream": false, "client_ip": "10.1.0.7"}'::jsonb`;

const real =
  `select public.agent_begin_turn(${ORG}, ${USER}, '10.1.0.' || cast(:ip as text), 'app', ${SESSION},
  1000000, 1000000, 1000000, 60, 20, true);
select public.agent_finish_turn(${SESSION}, ${ORG}, ${USER}, 'app', 'How do I join a group?', ${ANSWER}, 86400, 20,
  jsonb_build_object('request_id', md5(random()::text), 'org_id', ${ORG}, 'user_id', ${USER}, 'session_id', ${SESSION},
    'channel', 'app', 'model', 'gpt-4.1-mini', 'prompt_tokens', 60, 'completion_tokens', 25, 'total_tokens', 85,
    'latency_ms', 800, 'success', true, 'metadata', ${USAGE_METADATA}));`;

const ideal = `begin;
select p.id from ops.agent_policies p where coalesce(p.org_id, '00000000-0000-0000-0000-000000000000') in ('00000000-0000-0000-0000-000000000000', ${ORG}) and coalesce(p.channel, '') in ('', 'app');
select 1 from public.org_memberships m where m.org_id = ${ORG} and m.user_id = ${USER};
select 1 from public.agent_opt_outs o where o.org_id = ${ORG} and (o.user_id is null or o.user_id = ${USER}) limit 1;
select s.org_id, s.user_id, s.expires_at from public.agent_sessions s where s.id = ${SESSION};
select m.role, m.content from public.agent_session_messages m where m.session_id = ${SESSION} order by m.id desc limit 20;
insert into public.bench_counters (k, n) values ('ip/10.1.0.' || cast(:ip as text), 1), ('org/' || cast(:u as text), 1), ('user/' || cast(:u as text), 1) on conflict (k) do update set n = bench_counters.n + 1;
commit;
begin;
insert into public.agent_sessions as s (id, org_id, user_id, expires_at) values (${SESSION}, ${ORG}, ${USER}, now() + interval '1 day') on conflict (id) do update set updated_at = now(), expires_at = excluded.expires_at;
insert into public.agent_session_messages (session_id, role, content) values (${SESSION}, 'user', 'How do I join a group?'), (${SESSION}, 'assistant', ${ANSWER});
delete from public.agent_session_messages m where m.id in (select o.id from public.agent_session_messages o where o.session_id = ${SESSION} order by o.id desc offset 20);
set local session_replication_role = replica;
insert into public.agent_usage_events (request_id, org_id, user_id, session_id, channel, model, prompt_tokens, completion_tokens, total_tokens, latency_ms, success, metadata) values (md5(random()::text), ${ORG}, ${USER}, ${SESSION}, 'app', 'gpt-4.1-mini', 60, 25, 85, 800, true, ${USAGE_METADATA});
insert into public.bench_counters (k, n) values ('spend/' || cast(:u as text), 85) on conflict (k) do update set n = bench_counters.n + excluded.n;
commit;`;

/** The ideal turn with each transaction's statements sent in one pipeline. */
const pipelined = ideal
  .replace(/^begin;$/gm, "\\startpipeline\nbegin;")
  .replace(/^commit;$/gm, "commit;\n\\endpipeline");

const TPCB_SCALE = 16;
/** pgbench's built-in TPC-B-like transaction, twice: the yardstick of a turn's work. */
const tpcb = `\\set aid random(1, ${TPCB_SCALE * 100000})
\\set bid random(1, ${TPCB_SCALE})
\\set tid random(1, ${TPCB_SCALE * 10})
\\set delta random(-5000, 5000)
begin;
update pgbench_accounts set abalance = abalance + :delta where aid = :aid;
select abalance from pgbench_accounts where aid = :aid;
update pgbench_tellers set tbalance = tbalance + :delta where tid = :tid;
update pgbench_branches set bbalance = bbalance + :delta where bid = :bid;
insert into pgbench_history (tid, bid, aid, delta, mtime) values (:tid, :bid, :aid, :delta, current_timestamp);
end;`;

/** Runs `script` with `perClient` turns per client; Postgres CPU ms used. */
async function cpuOfRun(ctx: BenchContext, script: string, perClient: number) {
  const u = new URL(ctx.stack.postgres.url);
  const before = await ctx.postgresCpuMs();
  await ctx.run(`${ctx.pgBin}/pgbench`, [
    ...["-n", "-h", u.hostname, "-p", u.port, "-U", "postgres", "-c", String(CLIENTS), "-j", "2"],
    ...["-t", String(perClient), "-M", "prepared", "-f", script, "postgres"],
  ], { PGOPTIONS: "--client-min-messages=warning" });
  return (await ctx.postgresCpuMs()) - before;
}

/**
 * CPU per turn at the margin: a short run and a long one with the same
 * clients; their difference over the extra turns leaves out what connecting
 * and the first plans cost (pgbench connects anew for every run).
 */
async function cpuPerTurn(ctx: BenchContext, name: string, sql: string) {
  const script = `${ctx.work}/turn-${name}.sql`;
  await Deno.writeTextFile(
    script,
    `\\set u random(1, 1000)\n\\set k random(1, 100)\n\\set ip random(1, 250)\n${sql}\n`,
  );
  const short = await cpuOfRun(ctx, script, 10);
  const extra = ctx.profile.seconds * 40;
  const long = await cpuOfRun(ctx, script, 10 + extra);
  const turns = CLIENTS * extra;
  const perTurn = (long - short) / turns;
  ctx.log(
    `turn floor ${name}: ${turns} turns at the margin, ${
      fixed(perTurn, 3)
    } ms Postgres CPU per turn`,
  );
  return { turns, perTurn };
}

export async function idealTurn(ctx: BenchContext): Promise<ScenarioResult> {
  await ctx
    .sql`create table if not exists public.bench_counters (k text primary key, n bigint not null)`;
  const u = new URL(ctx.stack.postgres.url);
  await ctx.run(`${ctx.pgBin}/pgbench`, [
    ...[
      "-i",
      "-q",
      "-s",
      String(TPCB_SCALE),
      "-h",
      u.hostname,
      "-p",
      u.port,
      "-U",
      "postgres",
      "postgres",
    ],
  ], { PGOPTIONS: "--client-min-messages=warning" });
  const r = await cpuPerTurn(ctx, "real", real);
  const i = await cpuPerTurn(ctx, "ideal", ideal);
  const p = await cpuPerTurn(ctx, "ideal-pipelined", pipelined);
  const t = await cpuPerTurn(ctx, "tpcb", tpcb);
  const ratio = r.perTurn / p.perTurn;
  return {
    sections: {
      "ideal-turn": markdownTable(
        [
          "turn (16 clients, prepared)",
          "answered turns",
          "Postgres CPU ms per turn",
          "real ÷ this",
        ],
        [
          ["begin + finish turn", r.turns, fixed(r.perTurn, 3), "1.00"],
          [
            "ideal turn, statement by statement",
            i.turns,
            fixed(i.perTurn, 3),
            fixed(r.perTurn / i.perTurn),
          ],
          ["ideal turn, pipelined", p.turns, fixed(p.perTurn, 3), fixed(r.perTurn / p.perTurn)],
          [
            "two TPC-B transactions",
            t.turns,
            fixed(2 * t.perTurn, 3),
            fixed(r.perTurn / (2 * t.perTurn)),
          ],
        ],
      ),
    },
    targets: [{
      target: "Postgres CPU per answered turn ≤ 1.5× the ideal turn (pipelined, same run)",
      measured: `${fixed(r.perTurn, 3)} ms vs ${fixed(p.perTurn, 3)} ms (${fixed(ratio)}×; ${
        fixed(r.perTurn / (2 * t.perTurn))
      }× two TPC-B transactions)`,
      met: ratio <= 1.5,
    }],
  };
}
