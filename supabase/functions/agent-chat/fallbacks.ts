/**
 * Owns model fallbacks: the primary (AI_AGENT_MODEL at OPENAI_BASE_URL) and
 * then AI_AGENT_MODEL_FALLBACKS in order, each upstream behind its circuit
 * breaker (breaker.ts), as one ModelClient.
 *
 * The next upstream is tried only after a retryable failure (5xx, 429, 408,
 * a timeout, a connection refused or reset) and only before anything reached
 * the client: a stream commits to the upstream whose first event arrived,
 * and a failure after that ends the stream as before. Every attempt is
 * listed on the answer (or the error) for the usage row; the answer's model
 * is the one that answered. When every breaker is open and nothing was
 * tried, the call fails with UpstreamUnavailable (503 with Retry-After).
 */
import { AgentError } from "../_shared/errors.ts";
import type { Logger } from "../_shared/log.ts";
import { type BreakerGate, type CircuitBreaker, createBreaker } from "./breaker.ts";
import { type ModelAnswer, type ModelClient, ModelError, type StreamEvent } from "./model.ts";
import type { ModelAttempt, ModelRoute } from "./turn.ts";

export interface Upstream {
  model: string;
  client: ModelClient;
  breaker: CircuitBreaker;
}

/** Every upstream's breaker is open: nothing was tried. */
export class UpstreamUnavailable extends ModelError {
  constructor(readonly retryAfterSeconds: number, attempts: ModelAttempt[]) {
    super("every upstream's circuit breaker is open", undefined, 0, "other", attempts);
    this.name = "UpstreamUnavailable";
  }
}

/** `model@host`: the breaker's key and the attempt's name (no path, no credentials). */
export function upstreamLabel(model: string, baseURL: string): string {
  return `${model}@${new URL(baseURL).host}`;
}

/** Worth another upstream: the upstream is down or overloaded, not the request at fault. */
function fallbackWorthy(error: ModelError): boolean {
  if (error.kind === "status") {
    const s = error.status ?? 0;
    return s >= 500 || s === 429 || s === 408;
  }
  return error.kind !== "other";
}

function asModelError(error: unknown): ModelError {
  if (error instanceof ModelError) return error;
  return new ModelError(error instanceof Error ? error.message : String(error));
}

/** A failed attempt's outcome and what it may have cost. */
function failedAttempt(up: Upstream, error: ModelError): ModelAttempt {
  const outcome = error.kind === "status" ? `failed:${error.status}` : `failed:${error.kind}`;
  const billed = error.unsettledAttempts > 0 ? "estimated" : "none";
  const attempt = { model: up.model, upstream: up.breaker.upstream, outcome, billed } as const;
  return { ...attempt, ...retried(error.unsettledAttempts) };
}

/** Tries of this upstream that timed out or were cut off: metered as estimates. */
const retried = (n: number) => n > 0 ? { unsettled_tries: n } : {};

/** The attempt's effect on its breaker: the transition it caused or ran as. */
function transition(
  up: Upstream,
  gate: BreakerGate,
  verdict: "success" | "failure" | "none",
): ModelAttempt["breaker"] {
  let breaker: ModelAttempt["breaker"];
  if (verdict === "success") breaker = up.breaker.success();
  else if (verdict === "failure") breaker = up.breaker.failure();
  else up.breaker.release(gate);
  return breaker ?? (gate.allowed && gate.probe ? "probe" : undefined);
}

const withBreaker = (attempt: ModelAttempt, breaker: ModelAttempt["breaker"]) =>
  breaker ? { ...attempt, breaker } : attempt;

/** The attempts so far and the prompts they may have cost, carried to the next upstream. */
interface Tally {
  attempts: ModelAttempt[];
  unsettled: number;
  retryAfterMs: number;
  tried: boolean;
}

/**
 * An upstream's failure: recorded on its breaker and the tally. Returns the
 * error to throw when no other upstream may be tried.
 */
function failed(
  up: Upstream,
  gate: BreakerGate,
  thrown: unknown,
  signal: AbortSignal,
  tally: Tally,
): ModelError | undefined {
  const error = asModelError(thrown);
  const worthy = !signal.aborted && fallbackWorthy(error);
  // Only a retryable failure counts against the upstream; a 400 means it is up.
  const verdict = signal.aborted ? "none" : worthy ? "failure" : "success";
  tally.attempts.push(withBreaker(failedAttempt(up, error), transition(up, gate, verdict)));
  tally.unsettled += error.unsettledAttempts;
  return worthy ? undefined : withTally(error, tally);
}

function withTally(error: ModelError, tally: Tally): ModelError {
  const e = new ModelError(
    error.message,
    error.status,
    tally.unsettled,
    error.kind,
    tally.attempts,
  );
  e.stack = error.stack;
  return e;
}

/** Skips an upstream whose breaker is open; true when it may be called. */
function admitted(up: Upstream, tally: Tally): BreakerGate | undefined {
  const gate = up.breaker.admit();
  if (gate.allowed) {
    tally.tried = true;
    return gate;
  }
  tally.retryAfterMs = Math.min(tally.retryAfterMs, gate.retryAfterMs);
  const skipped = { outcome: "skipped:breaker_open", billed: "none" as const };
  tally.attempts.push({ model: up.model, upstream: up.breaker.upstream, ...skipped });
  return undefined;
}

/** Nothing answered: the last failure, or UpstreamUnavailable when nothing was tried. */
function exhausted(tally: Tally, last: ModelError | undefined): ModelError {
  if (!tally.tried || !last) {
    return new UpstreamUnavailable(Math.ceil(tally.retryAfterMs / 1000), tally.attempts);
  }
  return withTally(last, tally);
}

function answered(
  up: Upstream,
  breaker: ModelAttempt["breaker"],
  answer: ModelAnswer,
  tally: Tally,
): ModelAnswer {
  const billed = answer.usage ? "reported" as const : "estimated" as const;
  const attempt: ModelAttempt = {
    model: answer.model,
    upstream: up.breaker.upstream,
    outcome: "answered",
    billed,
    ...retried(answer.unsettledAttempts),
  };
  tally.attempts.push(withBreaker(attempt, breaker));
  return {
    ...answer,
    unsettledAttempts: answer.unsettledAttempts + tally.unsettled,
    attempts: tally.attempts,
  };
}

const newTally = (): Tally => ({
  attempts: [],
  unsettled: 0,
  retryAfterMs: Infinity,
  tried: false,
});

/**
 * `upstreams` in order, or, for a turn whose tenant policy names its models,
 * what `routed` makes of the route.
 */
export function createFallbackModel(
  upstreams: Upstream[],
  routed: (route: ModelRoute) => Upstream[] = () => upstreams,
): ModelClient {
  const chain = (route: ModelRoute | undefined) => route ? routed(route) : upstreams;
  return {
    async complete(messages, signal, route) {
      const tally = newTally();
      let last: ModelError | undefined;
      for (const up of chain(route)) {
        const gate = admitted(up, tally);
        if (!gate) continue;
        try {
          const answer = await up.client.complete(messages, signal);
          return answered(up, transition(up, gate, "success"), answer, tally);
        } catch (error) {
          const final = failed(up, gate, error, signal, tally);
          if (final) throw final;
          last = asModelError(error);
        }
      }
      throw exhausted(tally, last);
    },
    async *stream(messages, signal, route) {
      const tally = newTally();
      let last: ModelError | undefined;
      for (const up of chain(route)) {
        const gate = admitted(up, tally);
        if (!gate) continue;
        const events = up.client.stream(messages, signal)[Symbol.asyncIterator]();
        let first: IteratorResult<StreamEvent>;
        try {
          first = await events.next();
        } catch (error) {
          const final = failed(up, gate, error, signal, tally);
          if (final) throw final;
          last = asModelError(error);
          continue;
        }
        // The upstream spoke: it is up, whatever happens to the stream after.
        yield* committed(up, transition(up, gate, "success"), first, events, tally);
        return;
      }
      throw exhausted(tally, last);
    },
  };
}

/** The rest of a stream whose first event arrived: no fallback from here on. */
async function* committed(
  up: Upstream,
  breaker: ModelAttempt["breaker"],
  first: IteratorResult<StreamEvent>,
  events: AsyncIterator<StreamEvent>,
  tally: Tally,
): AsyncGenerator<StreamEvent> {
  try {
    for (let item = first; !item.done; item = await events.next()) {
      const event = item.value;
      if (event.type === "delta") yield event;
      else yield { type: "done", answer: answered(up, breaker, event.answer, tally) };
    }
  } catch (error) {
    const e = asModelError(error);
    tally.attempts.push(withBreaker(failedAttempt(up, e), breaker));
    tally.unsettled += e.unsettledAttempts;
    throw withTally(e, tally);
  } finally {
    await events.return?.();
  }
}

export interface FallbackSettings {
  failures: number;
  openSeconds: number;
  now?: () => number;
  log?: Logger;
}

/** One breaker per upstream key for the isolate, created on first use. */
export function createBreakers(settings: FallbackSettings) {
  const breakers = new Map<string, CircuitBreaker>();
  return (label: string): CircuitBreaker => {
    let breaker = breakers.get(label);
    if (!breaker) {
      breaker = createBreaker(label, {
        failures: settings.failures,
        openMs: settings.openSeconds * 1000,
        now: settings.now ?? (() => performance.now()),
        onChange: (state, upstream) =>
          settings.log?.(state === "closed" ? "info" : "warn", `breaker_${state}`, { upstream }),
      });
      breakers.set(label, breaker);
    }
    return breaker;
  };
}

/** 503 upstream_unavailable: nothing was sent; try again when the first breaker half-opens. */
export function unavailable(error: UpstreamUnavailable): AgentError {
  return new AgentError("upstream_unavailable", "the assistant is unavailable, try again shortly", {
    detail: `${error.message}: ${error.attempts?.map((a) => a.upstream).join(", ")}`,
    headers: { "retry-after": String(Math.max(1, error.retryAfterSeconds)) },
  });
}
