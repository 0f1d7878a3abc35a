/**
 * `deno task bench` (npm run bench): measures what docs/benchmarks.md
 * reports, prints the tables and rewrites that file.
 *   --quick   shorter runs (for a smoke check; figures are noisier)
 *
 * Owns its PostgreSQL (durable settings: fsync on) and Redis, runs the
 * function, the OpenAI/Auth stand-ins and a bare forwarder as separate
 * processes, and drives load with wrk (HTTP) and pgbench (SQL).
 */
import postgres from "postgres";
import { commandLine } from "./cli.ts";
import { Redis } from "ioredis";
import { findPostgresTools, MissingToolError, which } from "../supabase/tests/support/tools.ts";
import { createAuthStandIn, newSigningKey } from "../supabase/tests/stand-ins/auth.ts";
import {
  functionProcess,
  type LocalStack,
  type Service,
  standInsProcess,
  startLocalStack,
} from "../supabase/tests/support/local-stack.ts";
import { cpuMs, postgresPids, residentMiB } from "./bench/processes.ts";
import { fixed, machineFacts, markdownTable, median, percentile } from "./bench/stats.ts";

const flags = commandLine({
  usage: `usage: deno task bench [--quick] [--write-docs]   (npm run bench)

Measures what docs/benchmarks.md reports on this machine and prints the tables.
  --quick       shorter runs (a smoke check; figures are noisier)
  --write-docs  rewrite the results in docs/benchmarks.md (default: .local/results/)`,
  options: { quick: { type: "boolean" }, "write-docs": { type: "boolean" } },
}, ({ values }) => ({ quick: values.quick === true, writeDocs: values["write-docs"] === true }));
const quick = flags.quick;
const seconds = quick ? 2 : 5;
const root = new URL("../", import.meta.url).pathname;
const wrkScript = `${root}scripts/bench/wrk-chat.lua`;
const work = await Deno.makeTempDir({ prefix: "agent-chat-bench-" });
let stack: LocalStack | undefined;
const forwarderProcess = `${root}scripts/bench/forwarder.ts`;
const log = (s: string) => console.error(`[bench] ${s}`);

const HOT_ORG = "00000000-0000-4000-8000-000000000001";
const manyUser = (i: number) => `00000000-0000-4000-a000-${String(i).padStart(12, "0")}`;
const manyOrg = (i: number) => `00000000-0000-4000-b000-${String(i).padStart(12, "0")}`;

async function run(cmd: string, args: string[], env: Record<string, string> = {}) {
  const r = await new Deno.Command(cmd, { args, env, stdout: "piped", stderr: "piped" }).output();
  const text = new TextDecoder().decode(r.stdout) + new TextDecoder().decode(r.stderr);
  if (!r.success) throw new Error(`${cmd} failed:\n${text}`);
  return text;
}

/** pgbench with a script file for `seconds`, up to 2 threads; returns its output. */
function pgbench(
  bin: string,
  pgUrl: string,
  clients: number,
  script: string,
  extra: string[] = [],
) {
  const u = new URL(pgUrl);
  return run(`${bin}/pgbench`, [
    ...["-n", "-h", u.hostname, "-p", u.port, "-U", "postgres"],
    ...["-c", String(clients), "-j", String(Math.min(clients, 2)), "-T", String(seconds)],
    ...["-f", script, ...extra, "postgres"],
  ], { PGOPTIONS: "--client-min-messages=warning" });
}

// ---------------------------------------------------------------- begin turn
async function benchBeginTurn(pgUrl: string, bin: string) {
  const rows: Array<Array<string | number>> = [];
  const results: Record<string, { rate: number; p50: number; p99: number }> = {};
  for (const scenario of ["hot org", "many orgs"] as const) {
    const script = `${work}/begin-${scenario.replace(" ", "-")}.sql`;
    const org = scenario === "hot org"
      ? `'${HOT_ORG}'::uuid`
      : `('00000000-0000-4000-b000-' || lpad(:u::text, 12, '0'))::uuid`;
    const user = scenario === "hot org"
      ? `('00000000-0000-4000-9000-' || lpad(:u::text, 12, '0'))::uuid`
      : `('00000000-0000-4000-a000-' || lpad(:u::text, 12, '0'))::uuid`;
    await Deno.writeTextFile(
      script,
      `\\set u random(1, 1000)
\\set ip random(1, 250)
select public.agent_begin_turn(${org}, ${user}, '10.1.0.' || :ip, 'app', null, 1000000, 1000000, 1000000, 60, 20, false);
`,
    );
    for (const clients of [1, 16, 64]) {
      const logDir = await Deno.makeTempDir({ dir: work });
      const out = await pgbench(bin, pgUrl, clients, script, [
        "-l",
        `--log-prefix=${logDir}/tx`,
      ]);
      const rate = Number(/tps = ([\d.]+)/.exec(out)?.[1] ?? NaN);
      const latencies: number[] = [];
      for await (const f of Deno.readDir(logDir)) {
        for (const line of (await Deno.readTextFile(`${logDir}/${f.name}`)).split("\n")) {
          const us = Number(line.split(" ")[2]);
          if (Number.isFinite(us) && line) latencies.push(us / 1000);
        }
      }
      latencies.sort((a, b) => a - b);
      const r = { rate, p50: percentile(latencies, 50), p99: percentile(latencies, 99) };
      results[`${scenario}@${clients}`] = r;
      rows.push([scenario, clients, Math.round(rate), fixed(r.p50), fixed(r.p99)]);
      log(
        `begin turn ${scenario} @${clients}: ${Math.round(rate)}/s p50 ${fixed(r.p50)} ms p99 ${
          fixed(r.p99)
        } ms`,
      );
    }
  }
  // The reference the database issue names: a naive function that upserts
  // three counters (no window, no all-or-nothing, no opt-outs or membership).
  await run(`${bin}/psql`, [
    pgUrl,
    "-qc",
    `
    create table if not exists bench_counters (k text primary key, n bigint not null);
    create or replace function bench_naive_upsert(p_org text, p_user text, p_ip text) returns void
    language sql as $$
      insert into bench_counters values (p_org, 1) on conflict (k) do update set n = bench_counters.n + 1;
      insert into bench_counters values (p_user, 1) on conflict (k) do update set n = bench_counters.n + 1;
      insert into bench_counters values (p_ip, 1) on conflict (k) do update set n = bench_counters.n + 1;
    $$;`,
  ]);
  const naive = `${work}/naive.sql`;
  await Deno.writeTextFile(
    naive,
    `\\set u random(1, 1000)
\\set ip random(1, 250)
select bench_naive_upsert('org:hot', 'user:' || :u, 'ip:10.1.0.' || :ip);
`,
  );
  const out = await pgbench(bin, pgUrl, 16, naive);
  const naiveRate = Number(/tps = ([\d.]+)/.exec(out)?.[1] ?? NaN);
  rows.push(["naive 3-counter upsert (reference, hot org)", 16, Math.round(naiveRate), "", ""]);
  log(`naive three-counter upsert @16: ${Math.round(naiveRate)}/s`);
  return { rows, results, naiveRate };
}

// ---------------------------------------------------------------- HTTP load
interface WrkResult {
  rps: number;
  p50: number;
  p95: number;
  p99: number;
  requests: number;
  failures: number;
}

async function wrk(
  url: string,
  clients: number,
  durationS: number,
  usersFile: string,
): Promise<WrkResult> {
  const out = await run("wrk", [
    "-t",
    String(Math.min(clients, 2)),
    "-c",
    String(clients),
    "-d",
    `${durationS}s`,
    "--timeout",
    "10s",
    "-s",
    wrkScript,
    url,
  ], { BENCH_USERS: usersFile });
  const json = JSON.parse(/BENCH_JSON (\{.*\})/.exec(out)![1]!);
  return {
    rps: json.requests / (json.duration_us / 1e6),
    p50: json.p50 / 1000,
    p95: json.p95 / 1000,
    p99: json.p99 / 1000,
    requests: json.requests,
    failures: json.socket_errors + json.non2xx,
  };
}

function functionEnv(
  store: "supabase" | "redis",
  pgUrl: string,
  redisUrl: string,
  standIns: Service,
) {
  return {
    SUPABASE_URL: standIns.url,
    SUPABASE_JWKS_URL: `${standIns.url}/auth/v1/.well-known/jwks.json`,
    AI_AGENT_DATABASE_URL: pgUrl,
    AI_AGENT_SESSION_STORE: store,
    AI_AGENT_REDIS_URL: redisUrl,
    AI_AGENT_RATE_LIMIT_MAX_REQUESTS: "1000000",
    AI_AGENT_TRUSTED_PROXY_HOPS: "1",
    OPENAI_API_KEY: "sk-bench",
    OPENAI_BASE_URL: `${standIns.url}/v1`,
  };
}

async function post(
  url: string,
  token: string,
  body: unknown,
): Promise<{ status: number; ms: number; json: Record<string, unknown> }> {
  const t = performance.now();
  const res = await fetch(url, {
    method: "POST",
    headers: { authorization: `Bearer ${token}`, "content-type": "application/json" },
    body: JSON.stringify(body),
  });
  const json = await res.json();
  return { status: res.status, ms: performance.now() - t, json };
}

// ---------------------------------------------------------------- main
async function main() {
  for (const tool of ["wrk"]) {
    if (!(await which(tool))) {
      throw new MissingToolError(
        `${tool} not found: apt-get install ${tool} (scripts/setup.sh --with-bench)`,
      );
    }
  }
  const tools = await findPostgresTools();
  stack = await startLocalStack({
    pgCron: false,
    postgres: { fast: false, extraSettings: { max_connections: "300" } },
  });
  stack.defer(() => Deno.remove(work, { recursive: true }));
  const { postgres: pg, redis } = stack;
  const spawnService = stack.spawn;
  const sql = postgres(pg.url, { max: 4, onnotice: () => {} });
  stack.defer(() => sql.end({ timeout: 1 }));
  log(`postgres ${pg.url} redis ${redis.url}`);

  await sql`insert into auth.users (id) select ('00000000-0000-4000-9000-' || lpad(i::text, 12, '0'))::uuid from generate_series(1, 1000) i`;
  await sql`insert into auth.users (id) select ('00000000-0000-4000-a000-' || lpad(i::text, 12, '0'))::uuid from generate_series(1, 1000) i`;
  await sql`insert into public.org_memberships (org_id, user_id)
            select ${HOT_ORG}::uuid, ('00000000-0000-4000-9000-' || lpad(i::text, 12, '0'))::uuid from generate_series(1, 1000) i`;
  await sql`insert into public.org_memberships (org_id, user_id)
            select ('00000000-0000-4000-b000-' || lpad(i::text, 12, '0'))::uuid, ('00000000-0000-4000-a000-' || lpad(i::text, 12, '0'))::uuid
            from generate_series(1, 1000) i`;

  const begin = await benchBeginTurn(pg.url, tools.bin);

  // Stand-ins, users and tokens for HTTP runs: 20 orgs x 10 members.
  const signingKey = await newSigningKey();
  const auth = await createAuthStandIn({ signingKey });
  const standIns = await spawnService(standInsProcess, {
    AGENT_CHAT_SIGNING_KEY: JSON.stringify(signingKey),
  });
  stack.defer(() => standIns.stop());
  const lines: string[] = [];
  for (let i = 1; i <= 200; i++) {
    const org = manyOrg(((i - 1) % 20) + 1);
    lines.push(`${await auth.userToken(manyUser(i), { expiresInSeconds: 6 * 3600 })} ${org}`);
  }
  // Members 1..200 of orgs 1..20 (in addition to their own org from the begin-turn seed).
  await sql`insert into public.org_memberships (org_id, user_id)
            select ('00000000-0000-4000-b000-' || lpad((((i - 1) % 20) + 1)::text, 12, '0'))::uuid,
                   ('00000000-0000-4000-a000-' || lpad(i::text, 12, '0'))::uuid
            from generate_series(1, 200) i on conflict do nothing`;
  const usersFile = `${work}/users.txt`;
  await Deno.writeTextFile(usersFile, lines.join("\n") + "\n");

  // End to end, against the bare forwarder.
  const e2eRows: Array<Array<string | number>> = [];
  const e2e: Record<string, WrkResult> = {};
  const forwarder = await spawnService(forwarderProcess, { OPENAI_BASE_URL: `${standIns.url}/v1` });
  stack.defer(() => forwarder.stop());
  const targets: Array<[string, string]> = [["bare forwarder", forwarder.url]];
  const functions: Record<string, Service> = {};
  for (const store of ["supabase", "redis"] as const) {
    functions[store] = await spawnService(
      functionProcess,
      functionEnv(store, pg.url, redis.url, standIns),
    );
    stack.defer(() => functions[store]!.stop());
    targets.push([`agent-chat (${store} store)`, functions[store]!.url]);
  }
  // Where the CPU goes at concurrency 16: per request, in each process.
  const cpuRows: Array<Array<string | number>> = [];
  const pids: Record<string, number> = { "bare forwarder": forwarder.pid };
  for (const store of ["supabase", "redis"] as const) {
    pids[`agent-chat (${store} store)`] = functions[store]!.pid;
  }
  const cpuOf = async (server: string) => {
    let postgresMs = 0;
    for (const pid of await postgresPids(pg.dataDir)) postgresMs += await cpuMs(pid);
    return {
      server: await cpuMs(pids[server]!),
      postgres: postgresMs,
      standIns: await cpuMs(standIns.pid),
    };
  };
  for (const clients of [1, 16, 64]) {
    for (const [name, url] of targets) {
      await wrk(url, clients, 1, usersFile); // warm-up
      const before = clients === 16 ? await cpuOf(name) : undefined;
      const r = await wrk(url, clients, seconds, usersFile);
      if (before) {
        const after = await cpuOf(name);
        const per = (a: number, b: number) => fixed((a - b) / r.requests);
        cpuRows.push([
          name,
          per(after.server, before.server),
          per(after.postgres, before.postgres),
          per(after.standIns, before.standIns),
        ]);
      }
      e2e[`${name}@${clients}`] = r;
      e2eRows.push([
        name,
        clients,
        Math.round(r.rps),
        fixed(r.p50),
        fixed(r.p95),
        fixed(r.p99),
        r.failures,
      ]);
      log(
        `${name} @${clients}: ${Math.round(r.rps)} req/s p50 ${fixed(r.p50)} p95 ${
          fixed(r.p95)
        } p99 ${fixed(r.p99)} ms, failures ${r.failures}`,
      );
    }
  }

  // Growth: the first request on sessions that already hold N messages.
  const growthRows: Array<Array<string | number>> = [];
  const growth: Record<string, Record<number, number>> = { supabase: {}, redis: {} };
  const ioredis = new Redis(redis.url);
  stack.defer(() => Promise.resolve(ioredis.disconnect()));
  const growthUser = manyUser(1);
  const growthOrg = manyOrg(1);
  const growthToken = lines[0]!.split(" ")[0]!;
  for (const n of [10, 100, 1000, 10_000]) {
    for (const store of ["supabase", "redis"] as const) {
      const samples: number[] = [];
      for (let s = 0; s < (quick ? 5 : 15); s++) {
        const session = crypto.randomUUID();
        if (store === "supabase") {
          await sql`insert into public.agent_sessions (id, org_id, user_id, expires_at) values (${session}, ${growthOrg}, ${growthUser}, now() + interval '1 day')`;
          await sql`insert into public.agent_session_messages (session_id, role, content)
                    select ${session}::uuid, case when i % 2 = 1 then 'user' else 'assistant' end, 'stored message number ' || i
                    from generate_series(1, ${n}::int) i`;
        } else {
          const key = `agent-chat:{${session}}:messages`;
          const batch = [];
          for (let i = 1; i <= n; i++) {
            batch.push(
              JSON.stringify({
                role: i % 2 ? "user" : "assistant",
                content: `stored message number ${i}`,
              }),
            );
          }
          for (let i = 0; i < batch.length; i += 1000) {
            await ioredis.rpush(key, ...batch.slice(i, i + 1000));
          }
          await ioredis.set(`agent-chat:{${session}}:owner`, `${growthOrg}:${growthUser}`);
          await ioredis.expire(key, 86400);
        }
        const r = await post(functions[store]!.url, growthToken, {
          message: "And now?",
          org_id: growthOrg,
          session_id: session,
        });
        if (r.status !== 200) {
          throw new Error(`growth request failed: ${r.status} ${JSON.stringify(r.json)}`);
        }
        samples.push(r.ms);
      }
      growth[store]![n] = median(samples);
    }
    growthRows.push([n, fixed(growth.supabase![n]!), fixed(growth.redis![n]!)]);
    log(
      `growth ${n}: supabase ${fixed(growth.supabase![n]!)} ms, redis ${
        fixed(growth.redis![n]!)
      } ms`,
    );
  }

  for (const store of ["supabase", "redis"] as const) await functions[store]!.stop();

  // Cold start: process start to the first 200.
  const cold: number[] = [];
  for (let i = 0; i < 3; i++) {
    const started = performance.now();
    const svc = await spawnService(
      functionProcess,
      functionEnv("supabase", pg.url, redis.url, standIns),
    );
    while (true) {
      const r = await post(svc.url, growthToken, { message: "hi", org_id: growthOrg }).catch(
        () => ({ status: 0 }),
      );
      if (r.status === 200) break;
      await new Promise((res) => setTimeout(res, 5));
    }
    cold.push(performance.now() - started);
    await svc.stop();
  }
  log(`cold start: ${cold.map((c) => fixed(c, 0)).join(", ")} ms`);

  // Memory: resident size every 10,000 requests up to 40,000. V8 grows its
  // heap to a working size over the first ~20,000 requests (seen on this
  // machine); flat means no growth from 20,000 to 40,000.
  const mem = await spawnService(
    functionProcess,
    functionEnv("supabase", pg.url, redis.url, standIns),
    { denoFlags: ["--v8-flags=--expose-gc"] },
  );
  const heapMiB = async () =>
    (await (await fetch(`${mem.url}/__heap`)).json()).heapUsed / 1024 / 1024;
  stack.defer(() => mem.stop());
  const rssStart = await residentMiB(mem.pid);
  let served = 0;
  const rssAt: Array<[number, number]> = [];
  const heapAt: number[] = [];
  for (const target of [10_000, 20_000, 30_000, 40_000]) {
    while (served < target) served += (await wrk(mem.url, 16, 3, usersFile)).requests;
    rssAt.push([served, await residentMiB(mem.pid)]);
    heapAt.push(await heapMiB());
  }
  const at20k = rssAt[1]!;
  const at40k = rssAt[3]!;
  const memoryGrowth = at40k[1] - at20k[1];
  log(
    `memory: start ${fixed(rssStart, 1)} MiB, ${
      rssAt.map(([n, r]) => `${n}: ${fixed(r, 1)} MiB`).join(", ")
    }`,
  );
  await mem.stop();

  // Targets.
  const targetsRows: Array<Array<string>> = [];
  const met = (ok: boolean) => (ok ? "met" : "**not met**");
  for (const store of ["supabase", "redis"]) {
    const f = e2e[`agent-chat (${store} store)@16`]!;
    const b = e2e["bare forwarder@16"]!;
    targetsRows.push([
      `added p50 at concurrency 16 ≤ 3 ms (${store})`,
      `${fixed(f.p50 - b.p50)} ms`,
      met(f.p50 - b.p50 <= 3),
    ]);
    targetsRows.push([
      `added p99 at concurrency 16 ≤ 15 ms (${store})`,
      `${fixed(f.p99 - b.p99)} ms`,
      met(f.p99 - b.p99 <= 15),
    ]);
    const r64 = e2e[`agent-chat (${store} store)@64`]!;
    targetsRows.push([
      `≥ 1,000 req/s end to end at concurrency 64 (${store})`,
      `${Math.round(r64.rps)} req/s`,
      met(r64.rps >= 1000),
    ]);
    const ratio = growth[store]![10_000]! / growth[store]![10]!;
    targetsRows.push([
      `10 → 10,000 stored messages within 1.5× (${store})`,
      `${fixed(ratio)}×`,
      met(ratio <= 1.5),
    ]);
  }
  const hot16 = begin.results["hot org@16"]!;
  targetsRows.push([
    "begin turn ≥ 5,000 calls/s at 16 clients, one hot org",
    `${Math.round(hot16.rate)}/s`,
    met(hot16.rate >= 5000),
  ]);
  targetsRows.push([
    "memory flat after warm-up: from 20,000 to 40,000 requests RSS grows ≤ 5% and the V8 heap after a full GC ≤ 10%",
    `RSS ${memoryGrowth >= 0 ? "+" : ""}${fixed(memoryGrowth, 1)} MiB (${
      fixed((memoryGrowth / at20k[1]) * 100, 1)
    }%), heap ${fixed(heapAt[1]!, 1)} → ${fixed(heapAt[3]!, 1)} MiB`,
    met(memoryGrowth <= 0.05 * at20k[1] && heapAt[3]! <= 1.1 * heapAt[1]!),
  ]);

  const facts = await machineFacts();
  const date = new Date().toISOString().slice(0, 16).replace("T", " ") + " UTC";
  const doc = `# Benchmarks

Produced by \`npm run bench\` (\`deno task bench${
    quick ? " -- --quick" : ""
  }\`) on ${date}. The script
rewrites this file; rerun it to check the figures on your machine.

Machine: ${facts.cpu}, ${facts.cores} cores, ${facts.memory}; ${facts.postgres}; Redis ${
    /v=(\S+)/.exec(facts.redis)?.[1] ?? facts.redis
  }; Deno ${facts.deno}; Linux ${facts.kernel}.
Everything runs on this one machine: PostgreSQL (fsync on, default durability), Redis, the
function, the stand-ins and the load generators share its ${facts.cores} cores. Each HTTP run lasts
${seconds} s after a 1 s warm-up; load comes from \`wrk\` (HTTP) and \`pgbench\` (SQL).

## Targets

${markdownTable(["target", "measured", "result"], targetsRows)}

## Begin-turn call (one database round trip: opt-outs, membership, three buckets)

\`pgbench\` calling \`public.agent_begin_turn\` with ${seconds} s per row; "hot org" = every call in one org
(1,000 members), "many orgs" = 1,000 orgs of one member each. Every call is admitted (limits are
set high), so each one writes three bucket rows. The last row is the reference the database issue
names: a naive function that upserts three counters (no window, no all-or-nothing, no opt-out or
membership check, synchronous commit), measured the same way.

${markdownTable(["scenario", "clients", "calls/s", "p50 ms", "p99 ms"], begin.rows)}

## End to end

\`wrk\` POSTs a chat message as one of 200 users in 20 orgs, each request a new session, with the
OpenAI stand-in answering at once. The function uses the direct Postgres transport and
\`EdgeRuntime.waitUntil\` for the usage insert, as on hosted Supabase. The bare forwarder parses
the same body and forwards it to the same stand-in, so the difference is what agent-chat adds:
JWT verification, validation, the begin-turn call, the session write, the usage row.

${
    markdownTable(
      ["server", "concurrency", "req/s", "p50 ms", "p95 ms", "p99 ms", "failed"],
      e2eRows,
    )
  }

### Where the time goes

CPU milliseconds per request at concurrency 16, by process (\`wrk\` and redis-server, not shown,
use the rest of the two cores). On these 2 cores the run is CPU-bound: every agent-chat request costs two
Postgres transactions (begin turn: opt-outs, membership and three bucket writes; finish turn:
the session row, two messages and the usage row) plus the function's own work (the openai SDK,
the Postgres driver, Deno's HTTP server), against one parse and one fetch for the forwarder.

${markdownTable(["server", "server process ms", "postgres ms", "stand-ins ms"], cpuRows)}

## Growth with stored history

Median time of the first request on a session that already holds N messages (history cap 20:
the function reads the newest 20 and deletes at most 64 older ones per turn), ${quick ? 5 : 15}
sessions per cell, one at a time.

${markdownTable(["stored messages", "supabase store ms", "redis store ms"], growthRows)}

## Cold start

Process start (\`deno run\`, modules cached) to the first 200 answer, three runs: ${
    cold.map((c) => `${fixed(c, 0)} ms`).join(", ")
  } (median ${fixed(median(cold), 0)} ms).

## Memory

Resident size of the function process (Supabase store, concurrency 16): ${
    fixed(rssStart, 1)
  } MiB at start,
${
    rssAt.map(([n, r]) => `${fixed(r, 1)} MiB after ${n} requests`).join(", ")
  }. V8 heap in use after a full
garbage collection at the same points: ${heapAt.map((h) => `${fixed(h, 1)} MiB`).join(", ")}.
`;
  await Deno.writeTextFile(`${root}docs/benchmarks.md`, doc);
  console.log(doc);
}

try {
  await main();
} catch (error) {
  console.error(error instanceof MissingToolError ? `error: ${error.message}` : error);
  Deno.exitCode = 1;
} finally {
  await stack?.stop();
  await Deno.remove(work, { recursive: true }).catch(() => {});
}
