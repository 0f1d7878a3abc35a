/**
 * Bad input: the generated corpus (scripts/reliability/corpus.ts) against
 * the Supabase store: never a 5xx, each case its documented status, and
 * nothing written but usage rows. Then hostile unicode against the guard
 * process: 400 invalid_request in every field, only the refusal rows the
 * README documents (every case counted), and the valid lookalikes answered
 * and stored verbatim.
 */
import { createAuthStandIn } from "../../supabase/tests/stand-ins/auth.ts";
import { GUARD, intervalsSpanned, pool, type ReliabilityContext, send, settle } from "./context.ts";
import { type BadCase, buildCorpus } from "./corpus.ts";
import { buildHostileUnicode, buildLookalikes } from "./hostile-unicode.ts";

export async function badInput(ctx: ReliabilityContext): Promise<void> {
  const url = ctx.roomy.supabase.url;
  const org = crypto.randomUUID();
  const user = crypto.randomUUID();
  const other = ctx.members[0]!;
  await ctx.sql`insert into auth.users (id) values (${user})`;
  await ctx.sql`insert into public.org_memberships (org_id, user_id) values (${org}, ${user})`;
  const otherSession = crypto.randomUUID();
  const seeded = await send(url, {
    message: "owner's",
    org_id: other.org,
    session_id: otherSession,
  }, { authorization: `Bearer ${other.token}` });
  if (seeded.status !== 200) throw new Error(`could not seed a session: ${seeded.status}`);
  const token = await ctx.auth.userToken(user, { expiresInSeconds: 3600 });
  const corpus = buildCorpus({
    orgId: org,
    userId: user,
    token,
    foreignToken: await (await createAuthStandIn()).userToken(user),
    expiredToken: await ctx.auth.userToken(user, { expiresInSeconds: -120 }),
    wrongAudienceToken: await ctx.auth.userToken(user, { audience: "anon" }),
    otherOrgId: other.org,
    sessionOfOther: otherSession,
  });
  const before = await ctx
    .sql`select (select count(*) from public.agent_session_messages)::int as messages,
                                  (select count(*) from public.agent_sessions)::int as sessions`;
  const results: Array<{ status: number; expect: number[]; name: string; requestId: string }> = [];
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
  ctx.record(
    "bad input",
    `${corpus.length} generated cases: never a 5xx`,
    results.length,
    never5xx.length,
    results.filter((r) => r.status >= 500 || r.status === 0).slice(0, 3).map((r) =>
      `${r.name} → ${r.status}`
    ).join("; "),
  );
  const asDocumented = results.filter((r) => r.expect.includes(r.status));
  ctx.record(
    "bad input",
    "each case gets its documented status",
    results.length,
    asDocumented.length,
    results.filter((r) => !r.expect.includes(r.status)).slice(0, 3).map((r) =>
      `${r.name} → ${r.status}`
    ).join("; "),
  );
  const answered = results.filter((r) => r.status === 200).length;
  const after = await ctx
    .sql`select (select count(*) from public.agent_session_messages)::int as messages,
                                 (select count(*) from public.agent_sessions)::int as sessions`;
  const written = after[0]!.messages - before[0]!.messages;
  ctx.record(
    "bad input",
    "nothing written but usage rows (messages = 2 × answered)",
    1,
    written === 2 * answered ? 1 : 0,
    `${answered} answered, ${written} messages written, ${
      after[0]!.sessions - before[0]!.sessions
    } sessions`,
  );
  await hostileUnicode(ctx);
}

interface Answered {
  name: string;
  status: number;
  code: string | undefined;
  ms: number;
}

async function sendCases(url: string, cases: BadCase[], concurrency: number): Promise<Answered[]> {
  const out: Answered[] = [];
  await pool(cases, concurrency, async (c) => {
    const started = performance.now();
    let status = 0;
    let code: string | undefined;
    try {
      const res = await fetch(url, {
        method: "POST",
        headers: c.headers,
        body: c.body,
        signal: AbortSignal.timeout(10_000),
      });
      status = res.status;
      const text = await res.text();
      try {
        code = JSON.parse(text)?.error?.code;
      } catch { /* not JSON */ }
    } catch {
      status = 0;
    }
    out.push({ name: c.name, status, code, ms: performance.now() - started });
  });
  return out;
}

/**
 * Hostile unicode in every field, from a member and from a service caller
 * at one address: each 400 invalid_request; the refusal rows the README
 * documents and nothing else (no turn, no bucket, no model call).
 */
export async function hostileUnicode(ctx: ReliabilityContext): Promise<void> {
  const area = "hostile unicode";
  const url = ctx.guard.url;
  const org = crypto.randomUUID();
  const [user, serviceUser] = [crypto.randomUUID(), crypto.randomUUID()];
  await ctx.sql`insert into auth.users (id) values (${user}), (${serviceUser})`;
  await ctx.sql`insert into public.org_memberships (org_id, user_id)
    values (${org}, ${user}), (${org}, ${serviceUser})`;
  const ip = "198.51.100.7";
  const hostile = {
    orgId: org,
    userId: user,
    token: await ctx.auth.userToken(user, { expiresInSeconds: 3600 }),
    serviceKey: ctx.serviceKey,
    serviceUserId: serviceUser,
    ip,
  };
  const cases = buildHostileUnicode(hostile);
  const start = await ctx.dbNow();
  const calls = await ctx.openaiCalls();
  const began = performance.now();
  const results = await sendCases(url, cases, 16);
  const phaseMs = performance.now() - began;
  const refused = results.filter((r) => r.status === 400 && r.code === "invalid_request");
  ctx.record(
    area,
    `${cases.length} cases (lone surrogates and NUL in every field, overlong and CESU-8 bytes, BOMs, escaped keys, > 32 levels): 400 invalid_request`,
    results.length,
    refused.length,
    results.filter((r) => !refused.includes(r)).slice(0, 3).map((r) =>
      `${r.name} → ${r.status} ${r.code ?? ""}`
    ).join("; "),
  );
  // Every refusal is counted once the interval's aggregated rows are written.
  const rows = await settle(
    () =>
      ctx.sql`select count(*)::int as rows, coalesce(sum(event_count), 0)::int as requests,
                     count(*) filter (where error_code <> 'invalid_request')::int as other
              from public.agent_usage_events
              where created_at >= ${start} and metadata->>'client_ip' = ${ip}`.then((r) => r[0]!),
    (r) => r.requests >= results.length,
    GUARD.refusalIntervalSeconds * 1000 + 10_000,
  );
  // Two callers (the member, the service key), one kind each: a first row and an aggregated one per interval.
  const bound = 2 * 2 * intervalsSpanned(phaseMs, GUARD.refusalIntervalSeconds);
  ctx.record(
    area,
    "every refusal counted in sum(event_count)",
    results.length,
    Math.max(0, results.length - Math.abs(rows.requests - results.length)),
    `${rows.requests} counted`,
  );
  ctx.record(
    area,
    "refusal rows within the documented bound (first + aggregated per caller and interval)",
    1,
    rows.rows <= bound && rows.other === 0 ? 1 : 0,
    `${rows.rows} rows (bound ${bound})${rows.other ? `, ${rows.other} not invalid_request` : ""}`,
  );
  const sessions = await ctx.sql`select count(*)::int as n from public.agent_sessions
    where user_id in (${user}, ${serviceUser}) or org_id = ${org}`;
  const buckets = await ctx.sql`select count(*)::int as n from ops.rate_limits
    where bucket_key in (${`user:${user}`}, ${`user:${serviceUser}`}, ${`org:${org}`}, ${`ip:${ip}`})`;
  const modelCalls = (await ctx.openaiCalls()) - calls;
  ctx.record(
    area,
    "nothing else written: no session, no bucket, no model call",
    1,
    sessions[0]!.n === 0 && buckets[0]!.n === 0 && modelCalls === 0 ? 1 : 0,
    `${sessions[0]!.n} sessions, ${buckets[0]!.n} buckets, ${modelCalls} model calls`,
  );
  // Valid requests that look hostile are answered and stored verbatim.
  const lookalikes = buildLookalikes(hostile);
  const answered = await sendCases(url, lookalikes, 4);
  const stored = new Set(
    (await ctx.sql`select content from public.agent_session_messages
      where role = 'user' and content = any(${lookalikes.map((l) => l.stored)})`).map((r) =>
      r.content as string
    ),
  );
  const held = lookalikes.filter((l) =>
    answered.find((a) => a.name === l.name)?.status === 200 && stored.has(l.stored)
  );
  ctx.record(
    area,
    "valid lookalikes (one BOM, paired escapes, escaped keys, 32 levels) answered and stored verbatim",
    lookalikes.length,
    held.length,
    lookalikes.filter((l) => !held.includes(l)).map((l) =>
      `${l.name} → ${answered.find((a) => a.name === l.name)?.status}`
    ).join("; "),
  );
}
