/**
 * What the security tests (chat_security_*.test.ts) share: bounded polls on
 * an observable (a row, a log line, a recorded upstream request), the rows
 * and buckets a test reads, per-test addresses, raw HTTP/1.1 heads and
 * chunks for what fetch will not send, hand-signed HS256 tokens, and an
 * OpenAI-compatible upstream that holds its answers until released.
 */
import type postgres from "postgres";
import { SignJWT } from "jose";
import type { Harness } from "./function-harness.ts";
import { concat } from "./raw-http.ts";
import { completionResponse } from "./completion.ts";

export const utf8 = new TextEncoder();

export type Row = Record<string, unknown>;
export type Meta = Record<string, unknown>;
export const STORES = ["supabase", "redis"] as const;
export type Store = typeof STORES[number];

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

/** Polls `probe` until it returns a value `done` accepts (bounded); returns the last value. */
export async function waitFor<T>(
  probe: () => Promise<T> | T,
  done: (value: T) => boolean,
  timeoutMs = 5000,
): Promise<T> {
  const until = performance.now() + timeoutMs;
  let value = await probe();
  while (!done(value) && performance.now() < until) {
    await new Promise((r) => setTimeout(r, 20));
    value = await probe();
  }
  return value;
}

export async function rowsOfUser(sql: postgres.Sql, userId: string): Promise<Row[]> {
  return await sql`select * from public.agent_usage_events where user_id = ${userId} order by id`;
}

export async function bucket(sql: postgres.Sql, key: string): Promise<number> {
  const rows = await sql`select slot_total from ops.rate_limits where bucket_key = ${key}`;
  return Number(rows[0]?.slot_total ?? 0);
}

/** The request log lines (one per request) carrying this client request id. */
export function requestLines(h: Harness, clientRequestId: string) {
  return h.logs.filter((l) =>
    l.event === "request" && l.fields.client_request_id === clientRequestId
  );
}

/** A per-test address in 198.18.0.0/15 (benchmark range; no other test uses it). */
export function testIp(): string {
  const r = () => Math.floor(Math.random() * 250) + 1;
  return `198.18.${r()}.${r()}`;
}

/** Runs `tasks` with at most `width` in flight; results in order. */
export async function pooled<T>(count: number, width: number, task: (i: number) => Promise<T>) {
  const out: T[] = new Array(count);
  let next = 0;
  await Promise.all(Array.from({ length: width }, async () => {
    while (next < count) {
      const i = next++;
      out[i] = await task(i);
    }
  }));
  return out;
}

// ---------------------------------------------------------------------------
// Raw HTTP/1.1 over TCP: for what fetch will not send (lying Content-Length,
// slow or cut bodies, raw bytes).
// ---------------------------------------------------------------------------

export function rawHead(
  options: {
    token?: string;
    ip?: string;
    contentLength?: number;
    chunked?: boolean;
    extra?: Record<string, string>;
    method?: string;
  },
): string {
  const lines = [
    `${options.method ?? "POST"} /functions/v1/agent-chat HTTP/1.1`,
    "host: 127.0.0.1",
    "content-type: application/json",
    "connection: close",
    `x-forwarded-for: ${options.ip ?? testIp()}`,
    ...(options.token ? [`authorization: Bearer ${options.token}`] : []),
    ...(options.contentLength !== undefined ? [`content-length: ${options.contentLength}`] : []),
    ...(options.chunked ? ["transfer-encoding: chunked"] : []),
    ...Object.entries(options.extra ?? {}).map(([k, v]) => `${k}: ${v}`),
  ];
  return lines.join("\r\n") + "\r\n\r\n";
}

export function chunk(data: string | Uint8Array): Uint8Array {
  const bytes = typeof data === "string" ? utf8.encode(data) : data;
  return concat([utf8.encode(bytes.byteLength.toString(16) + "\r\n"), bytes, utf8.encode("\r\n")]);
}

/** An HS256 token signed with the project's legacy secret, claims as given (no defaults). */
export async function hs256(secret: string, claims: Record<string, unknown>, exp?: number) {
  let jwt = new SignJWT(claims).setProtectedHeader({ alg: "HS256", typ: "JWT" }).setIssuedAt();
  if (exp !== undefined) jwt = jwt.setExpirationTime(exp);
  return await jwt.sign(new TextEncoder().encode(secret));
}

export const inAnHour = () => Math.floor(Date.now() / 1000) + 3600;

/**
 * An OpenAI-compatible upstream that holds its first `hold` answers until
 * `release()` (later requests are answered at once), answers JSON or SSE
 * with usage, and counts the held answers whose caller had already gone.
 */
export function gatedUpstream(hold = Infinity) {
  let open!: () => void;
  const gate = new Promise<void>((r) => (open = r));
  const state = { requests: 0, dropped: 0 };
  const server = Deno.serve({ port: 0, hostname: "127.0.0.1", onListen: () => {} }, async (req) => {
    const body = await req.json();
    state.requests++;
    if (state.requests <= hold) {
      req.signal.addEventListener("abort", () => state.dropped++, { once: true });
      await gate;
    }
    const usage = { prompt_tokens: 20, completion_tokens: 2, total_tokens: 22 };
    return completionResponse(body, "late", usage, "chatcmpl-gated");
  });
  return {
    baseURL: `http://127.0.0.1:${server.addr.port}/v1`,
    get requests() {
      return state.requests;
    },
    get dropped() {
      return state.dropped;
    },
    release: () => open(),
    stop: () => server.shutdown(),
  };
}

/** Runs `fn` with a gated upstream as the harness's OpenAI; always released and stopped. */
export async function withGatedUpstream(
  hold: number,
  fn: (upstream: ReturnType<typeof gatedUpstream>) => Promise<void>,
) {
  const upstream = gatedUpstream(hold);
  try {
    await fn(upstream);
  } finally {
    upstream.release();
    await upstream.stop();
  }
}
