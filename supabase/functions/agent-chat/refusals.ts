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
 * - Authenticated refusals are keyed (user, code, scope): the first per key
 *   and interval is written as its own row, later ones are counted and
 *   written as one aggregated row when the interval ends. Accounts are cheap,
 *   so one address block gets at most `ipLimit` such first rows per
 *   interval; past that its refusals are only counted, under one key per
 *   block and code, written when the interval ends.
 *
 * Addresses are counted by block (IPv4 address, IPv6 /64; requests whose
 * address is unknown share one block). Rows per isolate
 * per interval: at most 1 anonymous row, plus at most 2 per refused key, with
 * at most `maxKeys` keys (the rest fold into one overflow key).
 */
import type { Caller } from "../_shared/auth.ts";
import { addressBlock } from "../_shared/client-ip.ts";
import type { AgentError } from "../_shared/errors.ts";
import type { RequestFacts, UsageEvent } from "./turn.ts";
import { usageEvent, type UsageSettings } from "./usage.ts";

export interface RefusalLedgerOptions {
  intervalMs: number;
  ipLimit: number;
  write(event: UsageEvent): Promise<void>;
  now?: () => number;
  maxKeys?: number;
}

interface Counted {
  first: UsageEvent;
  /** false: `first` was only counted (its address block was past its allowance). */
  written: boolean;
  /** Refusals counted but not written yet. */
  more: number;
}

export interface RefusalLedger {
  /**
   * Seconds until this address block may be served again: it is over its
   * anonymous-refusal limit for the current interval. 0 when it is not.
   * An unknown address is never blocked (that would block everyone behind a
   * misconfigured proxy).
   */
  blockedFor(ip: string | undefined): number;
  anonymous(code: string, ip: string | undefined): void;
  /**
   * Writes the first refusal of its key this interval; counts the rest, and
   * every refusal of an address block past its first-row allowance.
   */
  refused(key: string, event: UsageEvent, ip: string | undefined): Promise<void>;
  /** Writes what is counted and starts a new interval. */
  flush(): Promise<void>;
  close(): Promise<void>;
}

const TOP_IPS = 10;

/** What one interval has counted. */
class RefusalWindow {
  readonly byCode = new Map<string, number>();
  readonly byIp = new Map<string, number>();
  readonly keyed = new Map<string, Counted>();
  /** Rows written for authenticated refusals, per address block. */
  readonly firstRows = new Map<string, number>();
  constructor(readonly start: number, readonly maxKeys: number) {}

  /** A bounded map key: known keys, new ones while there is room, else `overflow`. */
  slot<T>(map: Map<string, T>, key: string, overflow: string): string {
    return map.has(key) || map.size < this.maxKeys ? key : overflow;
  }

  countAnonymous(code: string, block: string) {
    const address = this.slot(this.byIp, block, "other");
    this.byCode.set(code, (this.byCode.get(code) ?? 0) + 1);
    this.byIp.set(address, (this.byIp.get(address) ?? 0) + 1);
  }

  /**
   * Counts an authenticated refusal. Returns true when it must be written now:
   * the first of its key, while its address block has first rows left. Past
   * the block's allowance, refusals are only counted, per block and code.
   */
  countRefusal(key: string, event: UsageEvent, block: string, ipLimit: number): boolean {
    const rows = this.firstRows.get(block) ?? 0;
    // An unknown address is one block too: callers can make their address unknown.
    const allowed = rows < ipLimit;
    const k = this.slot(this.keyed, allowed ? key : `${block}:${event.error_code}`, "overflow");
    const seen = this.keyed.get(k);
    if (seen) {
      seen.more++;
      return false;
    }
    this.keyed.set(k, { first: event, written: allowed, more: allowed ? 0 : 1 });
    if (allowed) this.firstRows.set(block, rows + 1);
    return allowed;
  }

  rows(end: number): UsageEvent[] {
    const window = {
      window_start: new Date(this.start).toISOString(),
      window_end: new Date(end).toISOString(),
    };
    const rows: UsageEvent[] = [];
    const anonymous = [...this.byCode.values()].reduce((a, b) => a + b, 0);
    if (anonymous > 0) rows.push(anonymousRow(anonymous, this.byCode, this.byIp, window));
    for (const counted of this.keyed.values()) {
      if (counted.more > 0) rows.push(aggregatedRow(counted, window));
    }
    return rows;
  }
}

export function createRefusalLedger(options: RefusalLedgerOptions): RefusalLedger {
  const now = options.now ?? Date.now;
  const maxKeys = options.maxKeys ?? 10_000;
  let current = new RefusalWindow(now(), maxKeys);
  let timer: ReturnType<typeof setTimeout> | undefined;

  async function flush(): Promise<void> {
    const rows = current.rows(now());
    current = new RefusalWindow(now(), maxKeys);
    clearTimeout(timer);
    timer = undefined;
    await Promise.all(rows.map((row) => options.write(row)));
  }
  // Counted refusals are written when the interval ends, by timer or by the next refusal.
  function counted() {
    timer ??= setTimeout(() => void flush(), options.intervalMs);
    Deno.unrefTimer(timer);
  }
  const rollIfDue = () => now() - current.start >= options.intervalMs ? flush() : undefined;

  return {
    blockedFor(ip) {
      void rollIfDue();
      const block = addressBlock(ip);
      if (block === "unknown" || (current.byIp.get(block) ?? 0) < options.ipLimit) return 0;
      return Math.max(1, Math.ceil((current.start + options.intervalMs - now()) / 1000));
    },
    anonymous(code, ip) {
      void rollIfDue();
      current.countAnonymous(code, addressBlock(ip));
      counted();
    },
    async refused(key, event, ip) {
      await rollIfDue();
      if (current.countRefusal(key, event, addressBlock(ip), options.ipLimit)) {
        await options.write(event);
      } else {
        counted();
      }
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
  { first, written, more }: Counted,
  window: { window_start: string; window_end: string },
): UsageEvent {
  return {
    ...first,
    request_id: crypto.randomUUID(),
    session_id: null,
    latency_ms: 0,
    error_message: written
      ? `${more} more like request ${first.request_id}`
      : `${more} refusals like request ${first.request_id} (address over its row allowance)`,
    event_count: more,
    metadata: {
      ...first.metadata,
      aggregated: true,
      first_request_id: first.request_id,
      ...window,
    },
  };
}

/**
 * Records a refusal before admission: anonymous ones are only counted; an
 * authenticated caller's go through the keyed ledger. Returns the facts the
 * refusal is logged with. A refusal's row names the org only when the
 * database found the caller a member of it (`member: true`); otherwise the
 * org goes to metadata.requested_org_id, so no refused outsider (a bad body,
 * a bad Idempotency-Key, forbidden, its 429s) can put rows into another
 * tenant's reports.
 */
export async function recordRefusal(
  deps: { settings: UsageSettings; refusals: RefusalLedger },
  caller: Caller | undefined,
  facts: RequestFacts,
  refusal: AgentError,
  now: number,
): Promise<RequestFacts> {
  let refused: RequestFacts = refusal.options.scope
    ? { ...facts, refusedScope: refusal.options.scope }
    : facts;
  if (refusal.options.member !== true && facts.orgId) {
    refused = { ...refused, orgId: null, requestedOrgId: facts.orgId };
  }
  if (!caller) {
    deps.refusals.anonymous(refusal.code, facts.clientIp);
    return refused;
  }
  const event = usageEvent(deps.settings, refused, { error: refusal }, now - facts.started);
  const key = `${refused.userId ?? caller.mode}:${refusal.code}:${refusal.options.scope ?? ""}`;
  await deps.refusals.refused(key, event, facts.clientIp);
  return refused;
}

/**
 * A replayed answer costs no model call, but it is a request like any other:
 * it took a user: slot in the begin-turn call and is counted here like a
 * refusal (the first of a user's replays in an interval is its own row,
 * the rest one aggregated row; metadata.replayed, no tokens). The row names
 * the org only for a member.
 */
export async function recordReplay(
  deps: { settings: UsageSettings; refusals: RefusalLedger },
  facts: RequestFacts,
  replay: { replay: { model: string }; member: boolean },
  now: number,
): Promise<void> {
  const counted = replay.member || !facts.orgId
    ? facts
    : { ...facts, orgId: null, requestedOrgId: facts.orgId };
  const outcome = { model: replay.replay.model, replayed: true };
  const event = usageEvent(deps.settings, counted, outcome, now - facts.started);
  await deps.refusals.refused(`${facts.userId}:replayed:`, event, facts.clientIp);
}
