/**
 * Owns the circuit breaker of one upstream (model + base URL): after
 * `failures` consecutive retryable failures it opens for `openMs`, and calls
 * skip that upstream; then exactly one call probes it (half-open): a success
 * closes it, a failure opens it again for `openMs`.
 *
 * State lives in the isolate (each Edge Function instance has its own
 * breakers): with N isolates an upstream that fails hard is still called up
 * to `failures` times by each before every isolate has opened, and each
 * probes on its own. Transitions are reported through `onChange` (a log
 * line) and on the usage row's `metadata.model_attempts`, so an operator
 * sees them across isolates.
 *
 * Hand-written rather than `cockatiel`'s CircuitBreakerPolicy: that one
 * reads `Date.now()` itself (no clock to move in tests), and a stream's
 * verdict is known at its first delta, not when a wrapped call returns.
 */

export type BreakerState = "closed" | "open" | "half_open";

/** What a breaker says to one call: go (perhaps as the probe), or skip for `retryAfterMs`. */
export type BreakerGate =
  | { allowed: true; probe: boolean }
  | { allowed: false; retryAfterMs: number };

export interface BreakerOptions {
  failures: number;
  openMs: number;
  /** A monotonic clock in milliseconds. */
  now: () => number;
  onChange?: (state: BreakerState, upstream: string) => void;
}

export interface CircuitBreaker {
  readonly upstream: string;
  state(): BreakerState;
  admit(): BreakerGate;
  /** The upstream answered (or refused the request itself: it is up). Returns the transition. */
  success(): "closed" | undefined;
  /** A retryable failure. Returns "opened" when this failure opened the breaker. */
  failure(): "opened" | undefined;
  /** A call ended without a verdict (the client left): a probe's slot is freed. */
  release(gate: BreakerGate): void;
}

export function createBreaker(upstream: string, options: BreakerOptions): CircuitBreaker {
  let state: BreakerState = "closed";
  let consecutive = 0;
  let openedAt = 0;
  let probing = false;
  const change = (next: BreakerState) => {
    if (next !== state) options.onChange?.(next, upstream);
    state = next;
  };
  const open = () => {
    openedAt = options.now();
    probing = false;
    change("open");
    return "opened" as const;
  };

  return {
    upstream,
    state: () => state,
    admit() {
      if (state === "closed") return { allowed: true, probe: false };
      const waited = options.now() - openedAt;
      if (state === "open" && waited >= options.openMs) change("half_open");
      if (state === "half_open" && !probing) {
        probing = true;
        return { allowed: true, probe: true };
      }
      // Open, or a probe is under way: the probe's verdict comes within its call.
      return { allowed: false, retryAfterMs: Math.max(1000, options.openMs - waited) };
    },
    success() {
      consecutive = 0;
      probing = false;
      if (state === "closed") return undefined;
      change("closed");
      return "closed";
    },
    failure() {
      if (state === "half_open") return open();
      consecutive++;
      if (state === "closed" && consecutive >= options.failures) {
        consecutive = 0;
        return open();
      }
      return undefined;
    },
    release(gate) {
      if (gate.allowed && gate.probe) probing = false;
    },
  };
}
