/**
 * Owns what refusals cost: an in-isolate ledger so that no caller can turn
 * refused requests into one database write each.
 *
 * - Anonymous refusals (no valid credentials, or refused before
 *   authentication) are only counted here, by code and by client IP, and
 *   written as ONE aggregated row per isolate per interval (`org_id` null,
 *   error_code `anonymous_refusals`, event_count = how many). An IP with
 *   `ipLimit` anonymous refusals in the current interval is answered 429 at
 *   once, before any other work, until the interval ends.
 * - Authenticated refusals before admission are keyed (user, code, scope):
 *   the first per key and interval is written as its own row, later ones are
 *   counted and written as one aggregated row when the interval ends.
 *
 * Rows per isolate per interval: at most 1 anonymous row, plus at most 2 per
 * refused key, with at most `maxKeys` keys (the rest fold into one overflow key).
 */
import type { UsageEvent } from "./database.ts";

export interface RefusalLedgerOptions {
  intervalMs: number;
  ipLimit: number;
  write(event: UsageEvent): Promise<void>;
  now?: () => number;
  maxKeys?: number;
}

interface Counted {
  first: UsageEvent;
  more: number;
}

export interface RefusalLedger {
  /** true: this IP is over its anonymous-refusal limit for the current interval. */
  blocked(ip: string | undefined): boolean;
  anonymous(code: string, ip: string | undefined): void;
  /** Writes the first refusal of its key this interval; counts the rest. */
  refused(key: string, event: UsageEvent): Promise<void>;
  /** Writes what is counted and starts a new interval. */
  flush(): Promise<void>;
  close(): Promise<void>;
}

const TOP_IPS = 10;

export function createRefusalLedger(options: RefusalLedgerOptions): RefusalLedger {
  const now = options.now ?? Date.now;
  const maxKeys = options.maxKeys ?? 10_000;
  let windowStart = now();
  let byCode = new Map<string, number>();
  let byIp = new Map<string, number>();
  let keyed = new Map<string, Counted>();
  let timer: ReturnType<typeof setTimeout> | undefined;

  function schedule() {
    if (timer !== undefined) return;
    timer = setTimeout(() => {
      timer = undefined;
      void flush();
    }, options.intervalMs);
    Deno.unrefTimer(timer);
  }

  function rollIfDue(): Promise<void> | undefined {
    return now() - windowStart >= options.intervalMs ? flush() : undefined;
  }

  function rowsToWrite(from: number, to: number): UsageEvent[] {
    const window = {
      window_start: new Date(from).toISOString(),
      window_end: new Date(to).toISOString(),
    };
    const rows: UsageEvent[] = [];
    const anonymous = [...byCode.values()].reduce((a, b) => a + b, 0);
    if (anonymous > 0) rows.push(anonymousRow(anonymous, byCode, byIp, window));
    for (const { first, more } of keyed.values()) {
      if (more > 0) rows.push(aggregatedRow(first, more, window));
    }
    return rows;
  }

  async function flush(): Promise<void> {
    const rows = rowsToWrite(windowStart, now());
    windowStart = now();
    byCode = new Map();
    byIp = new Map();
    keyed = new Map();
    if (timer !== undefined) clearTimeout(timer);
    timer = undefined;
    await Promise.all(rows.map((row) => options.write(row)));
  }

  return {
    blocked(ip) {
      void rollIfDue();
      return (byIp.get(ip ?? "unknown") ?? 0) >= options.ipLimit;
    },
    anonymous(code, ip) {
      void rollIfDue();
      const address = byIp.has(ip ?? "unknown") || byIp.size < maxKeys ? ip ?? "unknown" : "other";
      byCode.set(code, (byCode.get(code) ?? 0) + 1);
      byIp.set(address, (byIp.get(address) ?? 0) + 1);
      schedule();
    },
    async refused(key, event) {
      await rollIfDue();
      const k = keyed.has(key) || keyed.size < maxKeys ? key : "overflow";
      const seen = keyed.get(k);
      if (seen) {
        seen.more++;
        schedule();
        return;
      }
      keyed.set(k, { first: event, more: 0 });
      await options.write(event);
    },
    flush,
    close: flush,
  };
}

function anonymousRow(
  count: number,
  byCode: Map<string, number>,
  byIp: Map<string, number>,
  window: { window_start: string; window_end: string },
): UsageEvent {
  const top = [...byIp.entries()].sort((a, b) => b[1] - a[1]).slice(0, TOP_IPS)
    .map(([ip, n]) => ({ ip, count: n }));
  return {
    request_id: crypto.randomUUID(),
    org_id: null,
    user_id: null,
    session_id: null,
    channel: null,
    model: null,
    prompt_tokens: null,
    cached_prompt_tokens: null,
    completion_tokens: null,
    total_tokens: null,
    latency_ms: 0,
    success: false,
    error_code: "anonymous_refusals",
    error_message: `${count} anonymous requests refused`,
    event_count: count,
    metadata: {
      aggregated: true,
      by_code: Object.fromEntries(byCode),
      top_ips: top,
      distinct_ips: byIp.size,
      ...window,
    },
  };
}

function aggregatedRow(
  first: UsageEvent,
  more: number,
  window: { window_start: string; window_end: string },
): UsageEvent {
  return {
    ...first,
    request_id: crypto.randomUUID(),
    session_id: null,
    latency_ms: 0,
    error_message: `${more} more like request ${first.request_id}`,
    event_count: more,
    metadata: {
      ...first.metadata,
      aggregated: true,
      first_request_id: first.request_id,
      ...window,
    },
  };
}
