/**
 * Slow bodies, over raw TCP against the guard process (body timeout
 * GUARD.bodyTimeoutMs): an authenticated body that trickles or stalls is 408
 * invalid_request soon after the timeout; without credentials the request is
 * 401 before the body would even time out (the body is never waited for);
 * a client that hangs up mid-upload is logged `client_closed`. Each refusal
 * is counted in the refusal rows, and none charges a bucket.
 */
import { GUARD, type ReliabilityContext, settle } from "./context.ts";
import {
  chunk,
  head,
  type Part,
  rawHttp,
  type RawResponse,
} from "../../supabase/tests/support/raw-http.ts";

/** A 408 must come back within the body timeout plus this. */
const SLACK_MS = 2000;

function codeOf(res: RawResponse | undefined): string | undefined {
  try {
    return res ? JSON.parse(res.body)?.error?.code : undefined;
  } catch {
    return undefined;
  }
}

async function member(
  ctx: ReliabilityContext,
): Promise<{ user: string; org: string; token: string }> {
  const user = crypto.randomUUID();
  const org = crypto.randomUUID();
  await ctx.sql`insert into auth.users (id) values (${user})`;
  await ctx.sql`insert into public.org_memberships (org_id, user_id) values (${org}, ${user})`;
  return { user, org, token: await ctx.auth.userToken(user, { expiresInSeconds: 3600 }) };
}

async function rowsOf(ctx: ReliabilityContext, user: string, expected: number) {
  return await settle(
    () =>
      ctx.sql`select count(*)::int as rows, coalesce(sum(event_count), 0)::int as requests,
                     array_agg(distinct error_code) as codes
              from public.agent_usage_events where user_id = ${user}`.then((r) =>
        r[0] as unknown as { rows: number; requests: number; codes: string[] | null }
      ),
    (c) => c.requests >= expected,
    GUARD.refusalIntervalSeconds * 1000 + 10_000,
  );
}

export async function slowBodies(ctx: ReliabilityContext): Promise<void> {
  const area = "slow bodies";
  const port = ctx.guard.port;
  const k = ctx.profile.slowBodies;
  const timeout = GUARD.bodyTimeoutMs;

  // Authenticated: a chunked body trickling one byte every 100 ms (30 s in all), or a
  // Content-Length body that stops after 20 bytes.
  const slow = await member(ctx);
  const ip = "198.18.3.1";
  const auth = { authorization: `Bearer ${slow.token}`, "x-forwarded-for": ip };
  const text = JSON.stringify({ message: "t".repeat(260), org_id: slow.org });
  const trickle = (): Part[] => {
    const parts: Part[] = [head({ port, headers: auth, chunked: true })];
    for (const ch of text) parts.push(chunk(ch), { delayMs: 100 });
    return [...parts, "0\r\n\r\n"];
  };
  const stalled = (): Part[] => [
    head({ port, headers: auth, contentLength: text.length }),
    text.slice(0, 20),
    { delayMs: 30_000 },
  ];
  const late = await Promise.all(
    Array.from({ length: 2 * k }, (_, i) => rawHttp(port, i % 2 ? stalled() : trickle(), 15_000)),
  );
  const in408 = late.filter((r) =>
    r?.status === 408 && codeOf(r) === "invalid_request" && r.ms < timeout + SLACK_MS
  );
  ctx.record(
    area,
    `authenticated body trickling (1 byte per 100 ms) or stalled: 408 invalid_request within ${
      timeout + SLACK_MS
    } ms (timeout ${timeout} ms)`,
    late.length,
    in408.length,
    `slowest ${Math.max(...late.map((r) => r?.ms ?? Infinity)).toFixed(0)} ms${
      late.filter((r) => !in408.includes(r!)).slice(0, 2).map((r) =>
        r ? `; ${r.status} after ${r.ms.toFixed(0)} ms` : "; no answer"
      ).join("")
    }`,
  );

  // Without credentials: 401 before the body timeout could have fired.
  const anonymous = await Promise.all(
    Array.from({ length: 2 * k }, (_, i) => {
      const headers = {
        "x-forwarded-for": `198.18.4.${i + 1}`,
        ...(i % 2 ? { authorization: "Bearer forged.token.here" } : {}),
      };
      const parts: Part[] = i % 4 < 2
        ? [head({ port, headers, contentLength: 500 }), { delayMs: 5000 }]
        : [head({ port, headers, chunked: true }), chunk("{"), { delayMs: 5000 }];
      return rawHttp(port, parts, 8000);
    }),
  );
  const at401 = anonymous.filter((r) => r?.status === 401 && r.ms < timeout);
  ctx.record(
    area,
    `no credentials, body promised but not sent: 401 before the body timeout (${timeout} ms)`,
    anonymous.length,
    at401.length,
    `slowest ${Math.max(...anonymous.map((r) => r?.ms ?? Infinity)).toFixed(0)} ms${
      anonymous.filter((r) => !at401.includes(r!)).slice(0, 2).map((r) =>
        r ? `; ${r.status} after ${r.ms.toFixed(0)} ms` : "; no answer"
      ).join("")
    }`,
  );

  // A client that hangs up mid-upload.
  const gone = await member(ctx);
  const goneAuth = { authorization: `Bearer ${gone.token}`, "x-forwarded-for": "198.18.3.2" };
  await Promise.all(Array.from({ length: k }, () =>
    rawHttp(port, [
      head({ port, headers: goneAuth, contentLength: text.length }),
      text.slice(0, 40),
      { delayMs: 200 },
      { close: true },
    ], 3000)));
  const goneRows = await rowsOf(ctx, gone.user, k);
  ctx.record(
    area,
    "client gone mid-upload: logged client_closed, each counted",
    k,
    goneRows.codes?.length === 1 && goneRows.codes[0] === "client_closed"
      ? Math.max(0, k - Math.abs(goneRows.requests - k))
      : 0,
    `${goneRows.requests} counted in ${goneRows.rows} rows, codes ${
      (goneRows.codes ?? []).join(",")
    }`,
  );

  // The 408s: counted as invalid_request refusals, no bucket charged, no turn.
  const slowRows = await rowsOf(ctx, slow.user, late.length);
  const buckets = await ctx.sql`select count(*)::int as n from ops.rate_limits
    where bucket_key in (${`user:${slow.user}`}, ${`user:${gone.user}`})`;
  const sessions = await ctx.sql`select count(*)::int as n from public.agent_sessions
    where user_id in (${slow.user}, ${gone.user})`;
  const clean = slowRows.codes?.length === 1 && slowRows.codes[0] === "invalid_request" &&
    buckets[0]!.n === 0 && sessions[0]!.n === 0;
  ctx.record(
    area,
    "each 408 counted as an invalid_request refusal; no bucket charged, no session",
    late.length,
    clean ? Math.max(0, late.length - Math.abs(slowRows.requests - late.length)) : 0,
    `${slowRows.requests} counted in ${slowRows.rows} rows; ${buckets[0]!.n} buckets, ${
      sessions[0]!.n
    } sessions`,
  );
}
