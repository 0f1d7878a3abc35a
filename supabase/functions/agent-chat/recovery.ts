/**
 * Owns the durable retry of writes whose outcome the function could not
 * learn or that a store could not take: a usage row, a settlement without a
 * row, a turn's save. Every such write is idempotent by its request id (the
 * usage row's unique request_id, ops.settled_requests, the request-id guard
 * of agent_finish_turn and of the Redis append), so sending it again is
 * safe, and a write that did land is not repeated.
 *
 * Pending writes live in the isolate. One drain loop at a time, kept alive
 * with EdgeRuntime.waitUntil: it tries the oldest write and, when that
 * lands, the rest (the store is back); when it fails, it waits (backoff 0.2
 * to 5 s) and tries again. The next request wakes it at once (`nudge`). A
 * write whose `until` comes before the next try wakes the loop for its last
 * try alone, then runs its `giveUp` once (the turn's save gives up into a
 * failure row that releases its key). The queue is bounded:
 * past `maxPending` the oldest write is dropped with an error line.
 */
import { describe } from "../_shared/errors.ts";
import type { Logger } from "../_shared/log.ts";

export interface PendingWrite {
  /** What is written, for the log line: "usage row", "turn save". */
  name: string;
  requestId: string;
  /** One try; throws when the store did not take it. */
  attempt(): Promise<void>;
  /** Clock time (ms) after which the write is given up. */
  until?: number | undefined;
  /** Runs once when the write is given up. */
  giveUp?: (() => Promise<void>) | undefined;
}

export interface Recovery {
  /** Queues a write that failed once, and starts the drain loop. */
  retry(write: PendingWrite): void;
  /** Tries the pending writes now (the next request calls this). */
  nudge(): void;
  readonly pending: number;
  /** Resolves once nothing is pending, or after `ms`. */
  settled(ms: number): Promise<void>;
}

export interface RecoveryOptions {
  log: Logger;
  extendLifetime?: ((p: Promise<unknown>) => void) | undefined;
  now?: () => number;
  maxPending?: number;
  baseDelayMs?: number;
  maxDelayMs?: number;
}

type Queued = PendingWrite & { tries: number };

/** The pending writes of one isolate and the one loop that drains them. */
class RecoveryQueue implements Recovery {
  private readonly queue: Queued[] = [];
  private loop: Promise<void> | undefined;
  private wake: (() => void) | undefined;
  private failures = 0;
  private nudged = false;
  private readonly now: () => number;

  constructor(private readonly options: RecoveryOptions) {
    this.now = options.now ?? (() => performance.now());
  }

  get pending() {
    return this.queue.length;
  }

  retry(write: PendingWrite) {
    if (this.queue.length >= (this.options.maxPending ?? 10_000)) {
      const dropped = this.queue.shift()!;
      this.options.log("error", "write_dropped", {
        write: dropped.name,
        request_id: dropped.requestId,
      });
    }
    this.queue.push({ ...write, tries: 1 });
    if (this.loop) return;
    this.loop = this.drain().finally(() => (this.loop = undefined));
    this.options.extendLifetime?.(this.loop);
  }

  nudge() {
    if (this.queue.length === 0) return;
    this.nudged = true;
    this.wake?.();
  }

  async settled(ms: number) {
    const until = this.now() + ms;
    while ((this.queue.length > 0 || this.loop) && this.now() < until) {
      await new Promise((r) => setTimeout(r, 10));
    }
  }

  private async drain() {
    // When the oldest write is tried next (backoff); deadlines come in between.
    let nextTry = this.now();
    this.nudged = false;
    while (this.queue.length > 0) {
      if (this.nudged || this.now() >= nextTry) {
        this.nudged = false;
        const landed = await this.pass();
        this.failures = landed ? 0 : this.failures + 1;
        nextTry = this.now() + this.backoff();
      }
      await this.expire();
      if (this.queue.length === 0) break;
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, this.wait(nextTry));
        this.wake = () => {
          clearTimeout(timer);
          resolve();
        };
      });
      this.wake = undefined;
    }
  }

  /**
   * One try of the oldest writes, until one lands or fails (a write past its
   * `until` gives up and the next is tried); when one lands, the store is
   * back and the rest go at once. True when one landed.
   */
  private async pass(): Promise<boolean> {
    for (let head = this.queue.shift(); head; head = this.queue.shift()) {
      const outcome = await this.attempt(head);
      if (outcome === "retry") return false;
      if (outcome === "landed") {
        await Promise.all(this.queue.splice(0).map((w) => this.attempt(w)));
        return true;
      }
    }
    return false;
  }

  /** The writes past their `until` get their last try (and give up) even behind a failing head. */
  private async expire() {
    const due = this.queue.filter((w) => w.until !== undefined && this.now() >= w.until);
    if (due.length === 0) return;
    for (const w of due) this.queue.splice(this.queue.indexOf(w), 1);
    await Promise.all(due.map((w) => this.attempt(w)));
  }

  /** Landed, given up (past its `until`), or queued again for a later try. */
  private async attempt(w: Queued): Promise<"landed" | "given_up" | "retry"> {
    w.tries++;
    const fields = { write: w.name, request_id: w.requestId, tries: w.tries };
    try {
      await w.attempt();
      this.options.log("info", "write_recovered", fields);
      return "landed";
    } catch (error) {
      if (w.until === undefined || this.now() < w.until) {
        this.queue.push(w);
        return "retry";
      }
      this.options.log("error", "write_given_up", {
        ...fields,
        detail: describe(error),
      });
      await w.giveUp?.().catch(() => {});
      return "given_up";
    }
  }

  private backoff() {
    const { baseDelayMs = 200, maxDelayMs = 5000 } = this.options;
    return Math.min(baseDelayMs * 2 ** this.failures, maxDelayMs) *
      (0.75 + Math.random() / 4);
  }

  /** How long to sleep: until the next try, or the first pending `until` if sooner. */
  private wait(nextTry: number) {
    const deadlines = this.queue.flatMap((w) => w.until === undefined ? [] : [w.until]);
    const at = Math.min(nextTry, ...deadlines.map((d) => d + 1));
    return Math.max(0, at - this.now());
  }
}

export function createRecovery(options: RecoveryOptions): Recovery {
  return new RecoveryQueue(options);
}

/**
 * Whether a failed write may have landed, or may land once the store is
 * back: anything but an error the store answered with (a SQLSTATE outside
 * connection exceptions (08), operator intervention (57), insufficient
 * resources (53) and transaction rollbacks (40); a Redis reply error). A
 * timeout, a dropped connection, a refused one: unknown.
 */
export function outcomeUnknown(error: unknown): boolean {
  const e = error as { code?: unknown; name?: unknown } | undefined;
  if (e?.name === "ReplyError") return false;
  const code = typeof e?.code === "string" ? e.code : "";
  const sqlstate = /^([0-9][0-9A-Z]|F0|HV|P0|XX)[0-9A-Z]{3}$/.test(code);
  return !sqlstate || /^(08|57|53|40)/.test(code);
}
