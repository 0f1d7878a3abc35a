/**
 * Usage growth: how the dashboards' time grows with the usage log, from 10k
 * to 1M rows spread over the last `days` days (50 orgs, two models, two
 * channels, one request in ten a failure, latencies in whole ms). Rows are
 * seeded without the settlement trigger (session_replication_role = replica:
 * the counters are not what is measured), the rollup is refreshed as pg_cron
 * would, then a minute of rows arrives after it (the raw tail), and each
 * dashboard is timed (median of three). Also the table's size per row.
 *
 *   deno run -A scripts/bench/usage-growth.ts [--days 30]   (its own Postgres)
 */
import postgres from "postgres";
import { fixed, markdownTable, median } from "./stats.ts";
import type { ScenarioResult } from "./context.ts";

const SIZES = [10_000, 100_000, 1_000_000];
const DASHBOARDS: Record<string, string> = {
  "ops.health_15m": "select * from ops.health_15m",
  "ops.monthly_cost": "select * from ops.monthly_cost",
  "ops.org_dashboard": "select * from ops.org_dashboard",
  "ops.evaluate_alerts()": "select * from ops.evaluate_alerts()",
  "ops.month_to_date_spend()": "select * from ops.month_to_date_spend()",
  "ops.usage_report (30 days, daily)":
    "select * from ops.usage_report(now() - interval '30 days', now(), interval '1 day')",
  // The same with its first bucket as long a partial day as it gets (23.5 hours: its percentiles
  // merge the most hours), whatever the hour the bench runs at.
  "ops.usage_report (30 days, daily, first day 23.5 h)":
    "select * from ops.usage_report(date_trunc('day', now(), 'UTC') - interval '29 days 23 hours 30 minutes', now(), interval '1 day')",
};

async function seed(sql: postgres.Sql, from: number, to: number, days: number) {
  await sql.begin(async (tx) => {
    await tx`set local session_replication_role = replica`;
    await tx`insert into public.agent_usage_events (request_id, org_id, user_id, channel, model, prompt_tokens,
               completion_tokens, total_tokens, latency_ms, success, error_code, created_at)
             select 'g-' || i, ('00000000-0000-4000-8000-' || lpad((1 + (i * 7919) % 50)::text, 12, '0'))::uuid,
                    gen_random_uuid(), case when i % 3 = 0 then 'whatsapp' else 'app' end,
                    case when i % 5 = 0 then 'gpt-4.1' else 'gpt-4.1-mini' end,
                    500 + i % 700, 50 + i % 300, 550 + i % 700 + i % 300,
                    300 + ((i * 104729) % 2700), i % 10 <> 0, case when i % 10 = 0 then 'openai_error' end,
                    now() - interval '61 seconds' - make_interval(secs => ((i * 2654435761) % (${days}::bigint * 86400 - 120))::double precision)
             from generate_series(${from}::bigint + 1, ${to}::bigint) i`;
  });
}

async function tail(sql: postgres.Sql, n: number, tag: number) {
  await sql`insert into public.agent_usage_events (request_id, org_id, model, total_tokens, prompt_tokens, latency_ms, success, created_at)
            select 't-' || ${tag}::int || '-' || i, ('00000000-0000-4000-8000-' || lpad((1 + i % 50)::text, 12, '0'))::uuid,
                   'gpt-4.1-mini', 100, 100, 300 + i % 2000, true, now() - make_interval(secs => (i % 60)::double precision)
            from generate_series(1, ${n}::int) i`;
}

async function timed(sql: postgres.Sql, text: string): Promise<number> {
  const samples: number[] = [];
  for (let i = 0; i < 3; i++) {
    const t0 = performance.now();
    await sql.unsafe(text);
    samples.push(performance.now() - t0);
  }
  return median(samples);
}

export async function usageGrowth(
  sql: postgres.Sql,
  log: (line: string) => void,
  days = 30,
): Promise<ScenarioResult> {
  const ms: Record<string, Record<number, number>> = {};
  const facts: string[][] = [];
  let have = 0;
  for (const n of SIZES) {
    await seed(sql, have, n, days);
    have = n;
    const t0 = performance.now();
    await sql`select ops.refresh_usage_rollups()`;
    await sql`select ops.refresh_usage_rollups()`;
    const refreshMs = performance.now() - t0;
    await tail(sql, Math.max(Math.round(n / (days * 1440)), 10), n);
    await sql`analyze public.agent_usage_events`;
    await sql`analyze ops.usage_rollup`;
    for (const [name, text] of Object.entries(DASHBOARDS)) {
      (ms[name] ??= {})[n] = await timed(sql, text);
      log(`usage growth ${n}: ${name} ${fixed(ms[name]![n]!)} ms`);
    }
    const [size] = await sql`select
        (select sum(pg_total_relation_size(i.inhrelid)) from pg_inherits i
         where i.inhparent = 'public.agent_usage_events'::regclass)::bigint as usage_bytes,
        pg_total_relation_size('ops.usage_rollup')::bigint as rollup_bytes,
        (select count(*) from ops.usage_rollup)::bigint as rollup_rows`;
    facts.push([
      String(n),
      fixed(Number(size!.usage_bytes) / n),
      String(size!.rollup_rows),
      fixed(Number(size!.rollup_bytes) / 1048576),
      fixed(refreshMs),
    ]);
  }
  const first = SIZES[0]!, last = SIZES[SIZES.length - 1]!;
  return {
    sections: {
      "usage-growth": markdownTable(
        ["dashboard", ...SIZES.map((n) => `${n} rows ms`), `${last / first}× rows`],
        Object.entries(ms).map(([name, t]) => [
          name,
          ...SIZES.map((n) => fixed(t[n]!)),
          `${fixed(t[last]! / t[first]!)}×`,
        ]),
      ) + "\n\n" + markdownTable(
        ["usage rows", "bytes per row (heap + indexes)", "rollup rows", "rollup MiB", "fold ms"],
        facts,
      ),
    },
    targets: Object.entries(ms).map(([name, t]) => ({
      target: `${name}: 10k → 1M usage rows within 3×`,
      measured: `${fixed(t[last]! / t[first]!)}×`,
      met: t[last]! / t[first]! <= 3,
    })),
  };
}

if (import.meta.main) {
  const { startPostgres } = await import("../../supabase/tests/support/postgres.ts");
  const { migrate } = await import("../../supabase/tests/support/migrate.ts");
  const days = Number(Deno.args[Deno.args.indexOf("--days") + 1] ?? 30) || 30;
  const pg = await startPostgres();
  try {
    await migrate(pg.url, { pgCron: false });
    const sql = postgres(pg.url, { max: 1, onnotice: () => {} });
    const result = await usageGrowth(sql, console.log, days);
    console.log(Object.values(result.sections).join("\n\n"));
    await sql.end();
  } finally {
    await pg.stop();
  }
}
