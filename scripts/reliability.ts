/**
 * `deno task test:reliability [--profile ci|full]`: load, faults and bad
 * input against agent-chat running as its own process, with real
 * PostgreSQL and Redis that this script stops and restarts. Prints a table,
 * rewrites docs/reliability.md, exits non-zero if any check did not hold.
 * The CI profile runs the same checks with fewer requests.
 */
import postgres from "postgres";
import { choiceFlag, commandLine } from "./cli.ts";
import { createAuthStandIn, newSigningKey } from "../supabase/tests/stand-ins/auth.ts";
import { MissingToolError } from "../supabase/tests/support/tools.ts";
import { parseSse } from "../supabase/tests/support/sse.ts";
import {
  functionProcess,
  type LocalStack,
  type Service,
  standInsProcess,
  startLocalStack,
} from "../supabase/tests/support/local-stack.ts";
import { markdownTable } from "./bench/stats.ts";
import { buildCorpus } from "./reliability/corpus.ts";

const flags = commandLine({
  usage: `usage: deno task test:reliability [--profile ci|full] [--write-docs]

Load, faults, upstream failures and bad input against agent-chat as its own process;
exits 1 if any check did not hold.
  --profile     ci (fewer requests, shorter outages) or full (default)
  --write-docs  rewrite the results in docs/reliability.md (default: .local/results/)`,
  options: { profile: { type: "string", default: "full" }, "write-docs": { type: "boolean" } },
}, ({ values }) => ({
  profile: choiceFlag(values.profile, "--profile", ["ci", "full"] as const),
  writeDocs: values["write-docs"] === true,
}));
const full = flags.profile === "full";
const LOAD_REQUESTS = full ? 2000 : 600;
const CONCURRENCY = 64;
const USER_LIMIT = 12;
const root = new URL("../", import.meta.url).pathname;
const log = (s: string) => console.error(`[reliability] ${s}`);
let stack: LocalStack | undefined;
const DOCUMENTED = new Set([200, 400, 401, 403, 404, 405, 429, 502, 503]);

interface Check {
  area: string;
  check: string;
  tried: number;
  held: number;
  note: string;
}
const checks: Check[] = [];
function record(area: string, check: string, tried: number, held: number, note = "") {
  checks.push({ area, check, tried, held, note });
  log(`${held === tried ? "ok  " : "FAIL"} ${area}: ${check} (${held}/${tried}) ${note}`);
}

async function pool<T>(items: T[], concurrency: number, fn: (item: T, i: number) => Promise<void>) {
  let next = 0;
  await Promise.all(Array.from({ length: Math.min(concurrency, items.length) }, async () => {
    while (next < items.length) {
      const i = next++;
      await fn(items[i]!, i);
    }
  }));
}

interface Sent {
  startedAt: number;
  status: number;
  ms: number;
  requestId: string;
  body: Record<string, unknown> | null;
  text: string;
}

async function send(
  url: string,
  body: unknown,
  headers: Record<string, string>,
  timeoutMs = 20_000,
): Promise<Sent> {
  const requestId = headers["x-request-id"] ?? `rel-${crypto.randomUUID()}`;
  const started = performance.now();
  try {
    const res = await fetch(url, {
      method: "POST",
      headers: { "content-type": "application/json", "x-request-id": requestId, ...headers },
      body: typeof body === "string" ? body : JSON.stringify(body),
      signal: AbortSignal.timeout(timeoutMs),
    });
    const text = await res.text();
    let parsed: Record<string, unknown> | null = null;
    try {
      parsed = JSON.parse(text);
    } catch { /* SSE or empty */ }
    return {
      startedAt: started,
      status: res.status,
      ms: performance.now() - started,
      requestId,
      body: parsed,
      text,
    };
  } catch (error) {
    return {
      startedAt: started,
      status: 0,
      ms: performance.now() - started,
      requestId,
      body: null,
      text: String(error),
    };
  }
}

async function main() {
  stack = await startLocalStack({ pgCron: false, redis: { durable: true } });
  const { postgres: pg, redis } = stack;
  const spawnService = stack.spawn;
  const sql = postgres(pg.url, { max: 4, onnotice: () => {} });
  stack.defer(() => sql.end({ timeout: 1 }));

  const signingKey = await newSigningKey();
  const auth = await createAuthStandIn({ signingKey });
  const standIns = await spawnService(standInsProcess, {
    AGENT_CHAT_SIGNING_KEY: JSON.stringify(signingKey),
  });
  stack.defer(() => standIns.stop());
  const script = (...b: unknown[]) =>
    fetch(`${standIns.url}/script`, { method: "POST", body: JSON.stringify(b) }).then((r) =>
      r.text()
    );

  const env = (store: "supabase" | "redis", userLimit = USER_LIMIT) => ({
    SUPABASE_URL: standIns.url,
    SUPABASE_JWKS_URL: `${standIns.url}/auth/v1/.well-known/jwks.json`,
    AI_AGENT_DATABASE_URL: pg.url,
    AI_AGENT_SESSION_STORE: store,
    AI_AGENT_REDIS_URL: redis.url,
    AI_AGENT_RATE_LIMIT_MAX_REQUESTS: "100000",
    AI_AGENT_RATE_LIMIT_USER_MAX_REQUESTS: String(userLimit),
    AI_AGENT_RATE_LIMIT_WINDOW_SECONDS: "3600",
    AI_AGENT_SESSION_MAX_MESSAGES: "1000",
    AI_AGENT_TRUSTED_PROXY_HOPS: "1",
    AI_AGENT_OPENAI_TIMEOUT_MS: "1500",
    AI_AGENT_OPENAI_MAX_RETRIES: "0",
    OPENAI_API_KEY: "sk-reliability",
    OPENAI_BASE_URL: `${standIns.url}/v1`,
  });

  // Members: 10 orgs x 15 users; tokens for each.
  const members: Array<{ org: string; user: string; token: string }> = [];
  for (let o = 0; o < 10; o++) {
    const org = crypto.randomUUID();
    for (let u = 0; u < 15; u++) {
      const user = crypto.randomUUID();
      members.push({
        org,
        user,
        token: await auth.userToken(user, { expiresInSeconds: 3 * 3600 }),
      });
    }
  }
  await sql`insert into auth.users ${sql(members.map((m) => ({ id: m.user })))}`;
  await sql`insert into public.org_memberships ${
    sql(members.map((m) => ({ org_id: m.org, user_id: m.user })))
  }`;

  // One instance per store with a tight user limit for the load test, and
  // one per store with room to spare for the fault tests.
  const functions: Record<string, Service> = {};
  const roomy: Record<string, Service> = {};
  for (const store of ["supabase", "redis"] as const) {
    functions[store] = await spawnService(functionProcess, env(store));
    stack.defer(() => functions[store]!.stop());
    roomy[store] = await spawnService(functionProcess, env(store, 100_000));
    stack.defer(() => roomy[store]!.stop());
  }

  // ------------------------------------------------------------ load
  for (const store of ["supabase", "redis"] as const) {
    const url = functions[store]!.url;
    // Each store starts with empty user buckets (the operator's clear function).
    await sql`select ops.clear_rate_limit('user:' || u) from unnest(${
      members.map((m) => m.user)
    }::text[]) as u`;
    const sessions = members.map(() => [crypto.randomUUID(), crypto.randomUUID()]);
    const plan = Array.from({ length: LOAD_REQUESTS }, (_, i) => {
      // A third of the traffic comes from 10 heavy users, who go over their limit.
      const mi = i % 3 === 0 ? (i / 3) % 10 : (i * 7919) % members.length;
      return { mi, session: sessions[mi]![i % 2]!, n: i };
    });
    const results: Array<Sent & { mi: number; session: string }> = [];
    await pool(plan, CONCURRENCY, async (p) => {
      const m = members[p.mi]!;
      const r = await send(url, { message: `load ${p.n}`, org_id: m.org, session_id: p.session }, {
        authorization: `Bearer ${m.token}`,
        "x-forwarded-for": `10.${p.mi % 250}.0.1`,
      });
      results.push({ ...r, mi: p.mi, session: p.session });
    });
    const fiveXX = results.filter((r) => r.status >= 500 || r.status === 0);
    record(
      `load (${store})`,
      `${LOAD_REQUESTS} requests at ${CONCURRENCY} concurrent: no 5xx`,
      results.length,
      results.length - fiveXX.length,
      fiveXX.length ? `statuses ${[...new Set(fiveXX.map((r) => r.status))].join(",")}` : "",
    );
    // Exact per bucket: each user is admitted min(attempts, limit) times.
    let exact = 0;
    for (let mi = 0; mi < members.length; mi++) {
      const mine = results.filter((r) => r.mi === mi);
      const admitted = mine.filter((r) => r.status === 200).length;
      const refused = mine.filter((r) => r.status === 429).length;
      if (admitted === Math.min(mine.length, USER_LIMIT) && admitted + refused === mine.length) {
        exact++;
      }
    }
    record(
      `load (${store})`,
      `user buckets admit exactly min(attempts, ${USER_LIMIT})`,
      members.length,
      exact,
    );
    // Every answered turn stored.
    const answered = results.filter((r) => r.status === 200);
    let stored = 0;
    if (store === "supabase") {
      const rows =
        await sql`select content from public.agent_session_messages where role = 'user' and content like 'load %'`;
      const contents = new Set(rows.map((r) => r.content as string));
      for (const r of answered) {
        if (contents.has((r.body?.message as string).replace("You said: ", ""))) stored++;
      }
    } else {
      const { Redis } = await import("ioredis");
      const client = new Redis(redis.url);
      const contents = new Set<string>();
      for (const s of new Set(answered.map((r) => r.session))) {
        for (const raw of await client.lrange(`agent-chat:{${s}}:messages`, 0, -1)) {
          contents.add(JSON.parse(raw).content);
        }
      }
      client.disconnect();
      for (const r of answered) {
        if (contents.has((r.body?.message as string).replace("You said: ", ""))) stored++;
      }
    }
    record(`load (${store})`, "every answered turn is stored", answered.length, stored);
    const ids = results.map((r) => r.requestId);
    const usage =
      await sql`select request_id, count(*)::int as n from public.agent_usage_events where request_id = any(${ids}) group by 1`;
    const one = usage.filter((u) => u.n === 1).length;
    record(`load (${store})`, "one usage row per request", ids.length, one);
    const p99 = results.map((r) => r.ms).sort((a, b) => a - b)[Math.floor(results.length * 0.99)]!;
    log(
      `load (${store}): p99 ${p99.toFixed(1)} ms, ${answered.length} answered, ${
        results.filter((r) => r.status === 429).length
      } refused`,
    );
  }

  // ------------------------------------------------------------ faults
  const fresh = (i: number) => members[(i * 31) % members.length]!;
  async function trafficDuring(
    store: "supabase" | "redis",
    ms: number,
    fault: () => Promise<void>,
    recover: () => Promise<void>,
  ) {
    const url = roomy[store]!.url;
    const out: Array<Sent & { message: string; session: string }> = [];
    let stop = false;
    let n = 0;
    const workers = Array.from({ length: 8 }, async () => {
      while (!stop) {
        const i = n++;
        const m = fresh(i);
        const session = crypto.randomUUID();
        const message = `fault ${store} ${i} ${crypto.randomUUID()}`;
        const r = await send(url, { message, org_id: m.org, session_id: session }, {
          authorization: `Bearer ${m.token}`,
        });
        out.push({ ...r, message, session });
      }
    });
    await new Promise((r) => setTimeout(r, ms));
    await fault();
    await new Promise((r) => setTimeout(r, ms));
    await recover();
    const recoveredAt = performance.now();
    // Recovery without restarting the function: requests started two seconds
    // after the service is back must all be answered.
    await new Promise((r) => setTimeout(r, 2000 + 2 * ms));
    stop = true;
    await Promise.all(workers);
    return { out, recoveredAt };
  }
  async function faultChecks(
    area: string,
    store: "supabase" | "redis",
    { out, recoveredAt }: {
      out: Array<Sent & { message: string; session: string }>;
      recoveredAt: number;
    },
  ) {
    const bounded = out.filter((r) => r.status !== 0 && r.ms < 10_000 && DOCUMENTED.has(r.status));
    const odd = out.filter((r) => !bounded.includes(r)).slice(0, 3).map((r) =>
      `${r.status} after ${r.ms.toFixed(0)} ms: ${r.text.slice(0, 80)}`
    );
    record(
      area,
      "every response within 10 s with a documented status",
      out.length,
      bounded.length,
      `${odd.join("; ")} statuses: ${
        Object.entries(
          out.reduce(
            (a, r) => ({ ...a, [r.status]: (a[r.status] ?? 0) + 1 }),
            {} as Record<number, number>,
          ),
        ).map(([k, v]) => `${k}×${v}`).join(" ")
      }`,
    );
    const after = out.filter((r) => r.startedAt > recoveredAt + 2000);
    record(
      area,
      "recovers without restarting the function (requests started 2 s after the restart)",
      after.length,
      after.filter((r) => r.status === 200).length,
    );
    const answered = out.filter((r) => r.status === 200);
    let kept = 0;
    if (store === "supabase") {
      const rows =
        await sql`select content from public.agent_session_messages where content = any(${
          answered.map((r) => r.message)
        })`;
      kept = new Set(rows.map((r) => r.content)).size;
    } else {
      const { Redis } = await import("ioredis");
      const client = new Redis(redis.url);
      for (const r of answered) {
        const list = await client.lrange(`agent-chat:{${r.session}}:messages`, 0, -1);
        if (list.some((raw) => JSON.parse(raw).content === r.message)) kept++;
      }
      client.disconnect();
    }
    record(area, "no admitted-and-answered turn lost", answered.length, kept);
  }

  await faultChecks(
    "postgres stopped and restarted",
    "supabase",
    await trafficDuring("supabase", full ? 1500 : 800, () => pg.pause(), () => pg.resume()),
  );
  await faultChecks(
    "redis stopped and restarted",
    "redis",
    await trafficDuring("redis", full ? 1500 : 800, () => redis.pause(), () => redis.resume()),
  );

  // OpenAI failing, hanging, cutting streams.
  {
    const url = roomy.supabase!.url;
    const behaviours = [
      { kind: "error", status: 500 },
      { kind: "error", status: 503 },
      { kind: "error", status: 429 },
      { kind: "malformed" },
      { kind: "hang" },
      { kind: "cut", afterChunks: 1 },
    ];
    const rounds = full ? 5 : 2;
    const outcomes: Array<{ ok: boolean; ms: number; what: string }> = [];
    for (let r = 0; r < rounds; r++) {
      for (const b of behaviours) {
        await script(b);
        const m = fresh(r * 10 + outcomes.length);
        const stream = b.kind === "cut";
        const res = await send(url, { message: "upstream fault", org_id: m.org, stream }, {
          authorization: `Bearer ${m.token}`,
        });
        const ok = stream
          ? res.status === 200 && parseSse(res.text).at(-1)?.event === "error" &&
            parseSse(res.text).at(-1)?.data.error.code === "openai_error"
          : res.status === 502 &&
            (res.body?.error as { code?: string } | undefined)?.code === "openai_error";
        outcomes.push({
          ok: ok && res.ms < 10_000,
          ms: res.ms,
          what: `${b.kind}${"status" in b ? ` ${b.status}` : ""} → ${res.status} in ${
            res.ms.toFixed(0)
          } ms ${res.text.slice(0, 60)}`,
        });
      }
    }
    record(
      "openai failing, hanging, cutting streams",
      "502 openai_error (or an SSE error event) within 10 s",
      outcomes.length,
      outcomes.filter((o) => o.ok).length,
      `slowest ${Math.max(...outcomes.map((o) => o.ms)).toFixed(0)} ms ${
        outcomes.filter((o) => !o.ok).slice(0, 2).map((o) => o.what).join("; ")
      }`,
    );
    const after = [];
    for (let i = 0; i < 5; i++) {
      const m = fresh(500 + i);
      after.push(
        await send(url, { message: "after", org_id: m.org }, {
          authorization: `Bearer ${m.token}`,
        }),
      );
    }
    record(
      "openai failing, hanging, cutting streams",
      "answers again once the upstream recovers",
      after.length,
      after.filter((r) => r.status === 200).length,
    );
  }

  // ------------------------------------------------------------ bad input
  {
    const url = roomy.supabase!.url;
    const org = crypto.randomUUID();
    const user = crypto.randomUUID();
    const other = members[0]!;
    await sql`insert into auth.users (id) values (${user})`;
    await sql`insert into public.org_memberships (org_id, user_id) values (${org}, ${user})`;
    const otherSession = crypto.randomUUID();
    const seeded = await send(url, {
      message: "owner's",
      org_id: other.org,
      session_id: otherSession,
    }, { authorization: `Bearer ${other.token}` });
    if (seeded.status !== 200) throw new Error(`could not seed a session: ${seeded.status}`);
    const token = await auth.userToken(user, { expiresInSeconds: 3600 });
    const corpus = buildCorpus({
      orgId: org,
      userId: user,
      token,
      foreignToken: await (await createAuthStandIn()).userToken(user),
      expiredToken: await auth.userToken(user, { expiresInSeconds: -120 }),
      wrongAudienceToken: await auth.userToken(user, { audience: "anon" }),
      otherOrgId: other.org,
      sessionOfOther: otherSession,
    });
    const before =
      await sql`select (select count(*) from public.agent_session_messages)::int as messages,
                                    (select count(*) from public.agent_sessions)::int as sessions`;
    const results: Array<{ status: number; expect: number[]; name: string; requestId: string }> =
      [];
    await pool(corpus, 16, async (c, i) => {
      const requestId = `bad-${i}-${crypto.randomUUID().slice(0, 8)}`;
      let status = 0;
      try {
        const res = await fetch(url, {
          method: c.method ?? "POST",
          headers: {
            ...c.headers,
            ...(c.headers["x-request-id"] === undefined ? { "x-request-id": requestId } : {}),
          },
          body: c.method === "GET" ? undefined : c.body,
          signal: AbortSignal.timeout(10_000),
        });
        await res.body?.cancel();
        status = res.status;
      } catch {
        status = 0;
      }
      results.push({ status, expect: c.expect, name: c.name, requestId });
    });
    const never5xx = results.filter((r) => r.status > 0 && r.status < 500);
    record(
      "bad input",
      `${corpus.length} generated cases: never a 5xx`,
      results.length,
      never5xx.length,
      results.filter((r) => r.status >= 500 || r.status === 0).slice(0, 3).map((r) =>
        `${r.name} → ${r.status}`
      ).join("; "),
    );
    const asDocumented = results.filter((r) => r.expect.includes(r.status));
    record(
      "bad input",
      "each case gets its documented status",
      results.length,
      asDocumented.length,
      results.filter((r) => !r.expect.includes(r.status)).slice(0, 3).map((r) =>
        `${r.name} → ${r.status}`
      ).join("; "),
    );
    const answered = results.filter((r) => r.status === 200).length;
    const after =
      await sql`select (select count(*) from public.agent_session_messages)::int as messages,
                                   (select count(*) from public.agent_sessions)::int as sessions`;
    const written = after[0]!.messages - before[0]!.messages;
    record(
      "bad input",
      "nothing written but usage rows (messages = 2 × answered)",
      1,
      written === 2 * answered ? 1 : 0,
      `${answered} answered, ${written} messages written, ${
        after[0]!.sessions - before[0]!.sessions
      } sessions`,
    );
  }
}

let failed = false;
try {
  await main();
} catch (error) {
  console.error(error instanceof MissingToolError ? `error: ${error.message}` : error);
  failed = true;
} finally {
  await stack?.stop();
}
const held = checks.every((c) => c.held === c.tried);
const table = markdownTable(
  ["area", "check", "tried", "held", "note"],
  checks.map((c) => [c.area, c.check, c.tried, c.held, c.note.replace(/\|/g, "\\|")]),
);
console.log(table);
if (!failed) {
  const date = new Date().toISOString().slice(0, 16).replace("T", " ") + " UTC";
  await Deno.writeTextFile(
    `${root}docs/reliability.md`,
    `# Reliability

Produced by \`npm run test:reliability${full ? "" : " -- --profile ci"}\` (profile **${
      full ? "full" : "ci"
    }**) on ${date}. The
script rewrites this file. CI runs the \`ci\` profile (${600} load requests per store, shorter fault
windows); \`npm run test:reliability\` runs the full one (2,000 per store).

agent-chat runs as its own process (direct Postgres transport, each store in turn) against a real
PostgreSQL and a real Redis that the script stops and restarts, and the OpenAI stand-in scripted to
fail. Each row says how many cases were tried and how many held.

${table}

How each area works:

- **load**: ${LOAD_REQUESTS} requests at ${CONCURRENCY} concurrent over 150 members of 10 orgs, two sessions
  each (a third of the requests from 10 heavy users), with a user limit of ${USER_LIMIT} per window: every user is admitted exactly
  min(attempts, ${USER_LIMIT}) times and refused the rest, every answered turn is in the store, and
  every request has one usage row.
- **faults**: 8 clients send new conversations continuously; Postgres (or Redis) is stopped, then
  started again. Answers during the outage are 503 \`session_store_error\` (or 502/429 where
  documented), every response comes back within 10 s, the function recovers on its own, and every
  turn that was answered with a 200 is in the store.
- **openai**: the stand-in answers 500, 503, 429, a malformed body, hangs past the 1.5 s timeout, or
  cuts a stream; each gives 502 \`openai_error\` (an \`error\` event for the stream).
- **bad input**: the corpus in \`scripts/reliability/corpus.ts\`: malformed and truncated JSON,
  wrong types in every field, unknown and prototype-polluting keys, huge and deeply nested bodies,
  unicode edge cases (lone surrogates, NUL, zero-width, RTL), header abuse, tampered, foreign,
  expired and replayed tokens, and injection strings in every field.
`,
  );
}
Deno.exit(failed || !held ? 1 : 0);
