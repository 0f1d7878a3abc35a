/**
 * Floods, rows counted: the profile's anonymous requests from one address
 * (429 once it is past AI_AGENT_IP_REFUSAL_LIMIT) and from as many
 * addresses, then a signed-in user's refused requests (an org they are not
 * a member of, a bad body). Against the guard process (refusal rows flushed
 * every GUARD.refusalIntervalSeconds): every request answered with its
 * documented status, rows within the documented bound, and every refusal
 * counted in sum(event_count) once the interval's rows are written.
 */
import {
  type Counted,
  GUARD,
  intervalsSpanned,
  pool,
  type ReliabilityContext,
  settle,
} from "./context.ts";

interface Answer {
  status: number;
  ms: number;
  ratelimit: string | null;
}

/** Anonymous requests of four kinds, each naming a real tenant's org in its body. */
function anonymous(i: number, url: string, ip: string, org: string): Promise<Response> {
  const body = JSON.stringify({ message: "flood", org_id: org });
  const headers: Record<string, string> = { "x-forwarded-for": ip };
  switch (i % 4) {
    case 0:
      return fetch(url, { method: "POST", headers, body });
    case 1:
      return fetch(url, {
        method: "POST",
        headers: { ...headers, authorization: "Bearer not.a.token" },
        body,
      });
    case 2:
      return fetch(url, { method: "GET", headers });
    default:
      return fetch(url, {
        method: "POST",
        headers: { ...headers, apikey: "sb_secret_guess" },
        body,
      });
  }
}

async function timed(request: () => Promise<Response>): Promise<Answer> {
  const started = performance.now();
  try {
    const res = await request();
    await res.body?.cancel();
    return {
      status: res.status,
      ms: performance.now() - started,
      ratelimit: res.headers.get("ratelimit"),
    };
  } catch {
    return { status: 0, ms: performance.now() - started, ratelimit: null };
  }
}

function p99(answers: Answer[]): number {
  const sorted = answers.map((a) => a.ms).sort((a, b) => a - b);
  return sorted[Math.floor(sorted.length * 0.99)] ?? 0;
}

function statuses(answers: Answer[]): string {
  const by = new Map<number, number>();
  for (const a of answers) by.set(a.status, (by.get(a.status) ?? 0) + 1);
  return [...by.entries()].sort((a, b) => a[0] - b[0]).map(([s, n]) => `${s}×${n}`).join(" ");
}

/** Waits until the rows `read` selects count `expected` requests (the interval flushed). */
function flushed<T extends Counted>(read: () => Promise<T>, expected: number): Promise<T> {
  return settle(read, (c) => c.requests >= expected, GUARD.refusalIntervalSeconds * 1000 + 10_000);
}

const CONCURRENCY = 64;
/** Every flood answer must come back within this; they are all answered before any work. */
const FAST_MS = 2000;

export async function floods(ctx: ReliabilityContext): Promise<void> {
  const victim = ctx.members[0]!.org;
  await oneAddress(ctx, victim);
  await manyAddresses(ctx, victim);
  await signedInRefused(ctx, victim);
}

/** Anonymous requests from one address: 401/405, then 429 past the limit; one row per interval. */
async function oneAddress(ctx: ReliabilityContext, victim: string): Promise<void> {
  const url = ctx.guard.url;
  const n = ctx.profile.floodRequests;
  const interval = GUARD.refusalIntervalSeconds;
  const area = "anonymous flood, one address";
  const ip = "198.18.0.1";
  const start = await ctx.dbNow();
  const began = performance.now();
  const answers: Answer[] = [];
  await pool(Array.from({ length: n }, (_, i) => i), CONCURRENCY, async (i) => {
    answers.push(await timed(() => anonymous(i, url, ip, victim)));
  });
  const phaseMs = performance.now() - began;
  const windows = intervalsSpanned(phaseMs, interval);
  const documented = answers.filter((a) => [401, 405, 429].includes(a.status) && a.ms < FAST_MS);
  ctx.record(
    area,
    `${n} requests at ${CONCURRENCY} concurrent: 401/405, or 429 past the limit, each within ${FAST_MS} ms`,
    answers.length,
    documented.length,
    `${statuses(answers)}; p99 ${p99(answers).toFixed(0)} ms`,
  );
  // Past AI_AGENT_IP_REFUSAL_LIMIT refusals in an interval the address is answered 429 at
  // once; requests already past that check when the limit was reached (at most the
  // concurrency) still get their 401/405.
  const served = answers.filter((a) => a.status !== 429).length;
  const allowance = windows * (GUARD.ipRefusalLimit + CONCURRENCY - 1);
  ctx.record(
    area,
    `429 once past AI_AGENT_IP_REFUSAL_LIMIT (${GUARD.ipRefusalLimit}) per interval`,
    1,
    served <= allowance && served >= Math.min(n, GUARD.ipRefusalLimit) ? 1 : 0,
    `${served} answered 401/405 over ${windows} intervals of ${interval} s (at most ${allowance} with ${CONCURRENCY} in flight)`,
  );
  const rows = await flushed(
    () =>
      ctx.sql`select count(*)::int as rows, coalesce(sum(event_count), 0)::int as requests
              from public.agent_usage_events
              where created_at >= ${start} and error_code = 'anonymous_refusals'
                and metadata->'top_ips' @> ${ctx.sql.json([{ ip }])}`.then((r) =>
        r[0] as unknown as Counted
      ),
    n,
  );
  ctx.record(
    area,
    `rows: at most one anonymous_refusals row per interval`,
    1,
    rows.rows <= windows ? 1 : 0,
    `${rows.rows} rows for ${n} requests over ${windows} intervals`,
  );
  ctx.record(
    area,
    "every refusal counted in sum(event_count)",
    n,
    Math.max(0, n - Math.abs(rows.requests - n)),
    `${rows.requests} counted`,
  );
}

/** Anonymous requests from as many addresses: 401/405; one row per interval, the org never named. */
async function manyAddresses(ctx: ReliabilityContext, victim: string): Promise<void> {
  const url = ctx.guard.url;
  const n = ctx.profile.floodRequests;
  const interval = GUARD.refusalIntervalSeconds;
  const area = "anonymous flood, many addresses";
  const ipOf = (i: number) => `198.19.${i >> 8}.${i & 255}`;
  const start = await ctx.dbNow();
  const began = performance.now();
  const answers: Answer[] = [];
  await pool(Array.from({ length: n }, (_, i) => i), CONCURRENCY, async (i) => {
    answers.push(await timed(() => anonymous(i, url, ipOf(i), victim)));
  });
  const phaseMs = performance.now() - began;
  const windows = intervalsSpanned(phaseMs, interval);
  // One request per address: none reaches the limit, so none is 429.
  const documented = answers.filter((a) => [401, 405].includes(a.status) && a.ms < FAST_MS);
  ctx.record(
    area,
    `${n} requests from ${n} addresses: 401/405, each within ${FAST_MS} ms`,
    answers.length,
    documented.length,
    `${statuses(answers)}; p99 ${p99(answers).toFixed(0)} ms`,
  );
  const rows = await flushed(
    () =>
      ctx.sql`select count(*)::int as rows, coalesce(sum(event_count), 0)::int as requests,
                     coalesce(sum((metadata->>'distinct_ips')::int), 0)::int as addresses,
                     coalesce(max(jsonb_array_length(metadata->'top_ips')), 0)::int as top
              from public.agent_usage_events
              where created_at >= ${start} and error_code = 'anonymous_refusals'
                and exists (select 1 from jsonb_array_elements(metadata->'top_ips') e
                            where e->>'ip' like '198.19.%')`.then((r) =>
        r[0] as unknown as Counted & { addresses: number; top: number }
      ),
    n,
  );
  ctx.record(
    area,
    "rows: at most one anonymous_refusals row per interval (top 10 addresses each)",
    1,
    rows.rows <= windows && rows.top <= 10 ? 1 : 0,
    `${rows.rows} rows over ${windows} intervals, ${rows.addresses} addresses counted, at most ${rows.top} listed per row`,
  );
  ctx.record(
    area,
    "every refusal counted in sum(event_count)",
    n,
    Math.max(0, n - Math.abs(rows.requests - n)),
    `${rows.requests} counted`,
  );
  // Neither flood put the org it named into any row.
  const named = await ctx.sql`select count(*)::int as n from public.agent_usage_events
    where created_at >= ${start} and (org_id = ${victim} or metadata::text like ${`%${victim}%`})`;
  ctx.record(
    area,
    "no row names the org the anonymous bodies named",
    1,
    named[0]!.n === 0 ? 1 : 0,
    `${named[0]!.n} rows`,
  );
}

/** A signed-in user's refusals: 403 up to the user limit, then 429; bounded rows, all counted. */
async function signedInRefused(ctx: ReliabilityContext, victim: string): Promise<void> {
  const url = ctx.guard.url;
  const interval = GUARD.refusalIntervalSeconds;
  const area = "signed-in user refused";
  const user = crypto.randomUUID();
  const home = crypto.randomUUID();
  await ctx.sql`insert into auth.users (id) values (${user})`;
  await ctx.sql`insert into public.org_memberships (org_id, user_id) values (${home}, ${user})`;
  const token = await ctx.auth.userToken(user, { expiresInSeconds: 3600 });
  const ip = "198.18.1.1";
  const headers = {
    authorization: `Bearer ${token}`,
    "content-type": "application/json",
    "x-forwarded-for": ip,
  };
  const m = ctx.profile.signedInRefusals;
  const start = await ctx.dbNow();
  const began = performance.now();
  const forbidden: Answer[] = [];
  const badBody: Answer[] = [];
  await pool(Array.from({ length: m }, (_, i) => i), 16, async (i) => {
    if (i % 2 === 0) {
      forbidden.push(
        await timed(() =>
          fetch(url, {
            method: "POST",
            headers,
            body: JSON.stringify({ message: "let me in", org_id: victim }),
          })
        ),
      );
    } else {
      badBody.push(
        await timed(() =>
          fetch(url, { method: "POST", headers, body: `{"message":"hi","org_id":"${home}",` })
        ),
      );
    }
  });
  const phaseMs = performance.now() - began;
  const windows = intervalsSpanned(phaseMs, interval);
  // Forbidden refusals consume the user: bucket: exactly the limit are 403, the rest 429 (user).
  const first = Math.min(forbidden.length, GUARD.userLimit);
  const got403 = forbidden.filter((a) => a.status === 403).length;
  const got429 = forbidden.filter((a) => a.status === 429 && /"user"/.test(a.ratelimit ?? ""))
    .length;
  ctx.record(
    area,
    `${forbidden.length} requests naming another org: exactly ${first} 403 (the user limit), then 429 scope user`,
    forbidden.length,
    got403 === first ? got403 + got429 : 0,
    statuses(forbidden),
  );
  ctx.record(
    area,
    `${badBody.length} bad bodies: 400 each`,
    badBody.length,
    badBody.filter((a) => a.status === 400).length,
    statuses(badBody),
  );
  const rows = await flushed(
    () =>
      ctx.sql`select count(*)::int as rows, coalesce(sum(event_count), 0)::int as requests,
                     count(distinct (error_code, metadata->'rate_limit'->>'scope'))::int as kinds,
                     count(*) filter (where org_id = ${victim})::int as named
              from public.agent_usage_events
              where created_at >= ${start} and user_id = ${user}`.then((r) =>
        r[0] as unknown as Counted & { kinds: number; named: number }
      ),
    m,
  );
  // forbidden, rate_limit (user) and invalid_request: a first row and an aggregated one each per interval.
  const bound = 3 * 2 * windows;
  ctx.record(
    area,
    "rows: the first of each kind per interval plus one aggregated row; none names the other org",
    1,
    rows.rows <= bound && rows.kinds <= 3 && rows.named === 0 ? 1 : 0,
    `${rows.rows} rows of ${rows.kinds} kinds for ${m} refusals over ${windows} intervals (bound ${bound})${
      rows.named ? `; ${rows.named} name the org` : ""
    }`,
  );
  ctx.record(
    area,
    "every refusal counted in sum(event_count)",
    m,
    Math.max(0, m - Math.abs(rows.requests - m)),
    `${rows.requests} counted`,
  );
}
