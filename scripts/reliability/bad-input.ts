/**
 * Bad input: the generated corpus (scripts/reliability/corpus.ts) against
 * the Supabase store: never a 5xx, each case its documented status, and
 * nothing written but usage rows.
 */
import { createAuthStandIn } from "../../supabase/tests/stand-ins/auth.ts";
import { pool, type ReliabilityContext, send } from "./context.ts";
import { buildCorpus } from "./corpus.ts";

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
}
