/**
 * Owns the answer to an admitted turn, as JSON or as Server-Sent Events, and
 * the one usage row of its model call: whatever happens after admission
 * (model failure, save failure, ownership race, client gone), exactly one row
 * is written, with the tokens the upstream reported or an estimate. Also the
 * replay of an Idempotency-Key's stored answer (no model call; the handler
 * counts it like a refusal).
 */
import { AgentError, describe } from "../_shared/errors.ts";
import { errorResponse, jsonResponse } from "../_shared/http.ts";
import type { AdmittedTurn } from "./admission.ts";
import { REPLAYED_HEADER, settle } from "./idempotency.ts";
import { type ModelAnswer, type ModelClient, ModelError, type StreamEvent } from "./model.ts";
import { outcomeUnknown, type Recovery } from "./recovery.ts";
import type { ChatRequest } from "./request.ts";
import { unavailable, UpstreamUnavailable } from "./fallbacks.ts";
import { type SessionStore, storeError } from "./session-store.ts";
import { type SSEWriter, streamSSE } from "./sse.ts";
import { estimateUsage } from "./token-estimate.ts";
import type { Outcome, RequestFacts, StoredAnswer, TokenUsage, UsageEvent } from "./turn.ts";
import { usageEvent, type UsageLogger } from "./usage.ts";

export interface AnswerDeps {
  settings: {
    model: string;
    sessionStore: string;
    systemPrompt: string;
    /** A turn's deadline; a save whose outcome is unknown is retried for as long. */
    turnDeadlineSeconds: number;
  };
  model: ModelClient;
  sessions: Pick<SessionStore, "append">;
  usage: UsageLogger;
  now: () => number;
  /** Keeps the isolate alive for work that outlives the response (a stream). */
  extendLifetime?: ((p: Promise<unknown>) => void) | undefined;
  /** The durable retry of a save whose outcome is unknown; without it, such a save is a 503. */
  recovery?: Pick<Recovery, "retry"> | undefined;
}

export interface TurnContext {
  facts: RequestFacts;
  body: ChatRequest;
  turn: AdmittedTurn;
  /** Aborted when the client goes away (the request's signal). */
  clientSignal: AbortSignal;
  /** Aborted at the turn's deadline (AI_AGENT_TURN_DEADLINE_SECONDS from the request's start). */
  deadline: AbortSignal;
  headers: Record<string, string>;
  /** Called once with the request's final status and outcome (the log line). */
  finished(status: number, outcome: Outcome): void;
}

/** Writes the usage row of this turn and reports the outcome; called exactly once per turn. */
async function meter(deps: AnswerDeps, ctx: TurnContext, status: number, outcome: Outcome) {
  const event = usageEvent(deps.settings, ctx.facts, outcome, deps.now() - ctx.facts.started);
  // A failed attempt releases its Idempotency-Key, so the retry runs.
  await deps.usage.record(settle(event, ctx.turn.idempotency));
  ctx.finished(status, outcome);
}

async function estimate(deps: AnswerDeps, ctx: TurnContext, text: string): Promise<TokenUsage> {
  const system = { content: deps.settings.systemPrompt };
  return await estimateUsage([system, ...ctx.turn.messages], text);
}

function modelError(error: unknown): AgentError {
  if (error instanceof UpstreamUnavailable) return unavailable(error);
  return new AgentError("openai_error", "the assistant could not answer, try again", {
    detail: describe(error),
  });
}

/** The upstreams the model call tried (fallbacks.ts), for the usage row. */
const attemptsOf = (error: unknown) => error instanceof ModelError ? error.attempts : undefined;

/** `usage` plus the prompts of `n` more attempts (a retried call sends the same prompt). */
function withPrompts(usage: TokenUsage, prompt: number, n: number): TokenUsage {
  const extra = prompt * n;
  return {
    ...usage,
    prompt_tokens: usage.prompt_tokens + extra,
    total_tokens: usage.total_tokens + extra,
  };
}

/**
 * What an answered call is metered as: the reported usage (estimated when the
 * upstream reported none), plus the prompt of every earlier attempt that may
 * have been billed (same prompt; its completion, never received, is unknown).
 */
async function billed(deps: AnswerDeps, ctx: TurnContext, answer: ModelAnswer): Promise<Outcome> {
  const usage = answer.usage ?? await estimate(deps, ctx, answer.text);
  const n = answer.unsettledAttempts;
  return {
    model: answer.model,
    usage: withPrompts(usage, usage.prompt_tokens, n),
    estimated: !answer.usage || n > 0,
    attempts: n + 1,
    modelAttempts: answer.attempts,
  };
}

/** A failed model call, metered with the prompts of the attempts that may have been billed. */
async function failed(
  deps: AnswerDeps,
  ctx: TurnContext,
  error: unknown,
  failure: AgentError,
): Promise<Outcome> {
  const n = error instanceof ModelError ? error.unsettledAttempts : 0;
  if (n === 0) return { error: failure, modelAttempts: attemptsOf(error) };
  const { prompt_tokens } = await estimate(deps, ctx, "");
  const none = { prompt_tokens: 0, completion_tokens: 0, total_tokens: 0, cached_prompt_tokens: 0 };
  return {
    usage: withPrompts(none, prompt_tokens, n),
    estimated: true,
    attempts: n,
    error: failure,
    modelAttempts: attemptsOf(error),
  };
}

/**
 * Saves the turn and writes its row either way. Returns what was billed, and
 * the refusal when the turn could not be saved. A save whose outcome is
 * unknown (timed out, connection lost, store unreachable) is not a failure:
 * the answer is sent, the key stays held, and the save is retried (it is
 * idempotent by request id) until it lands or the turn's deadline passes.
 */
async function persist(deps: AnswerDeps, ctx: TurnContext, answer: ModelAnswer) {
  const outcome = await billed(deps, ctx, answer);
  const success = settle(
    usageEvent(deps.settings, ctx.facts, outcome, deps.now() - ctx.facts.started),
    ctx.turn.idempotency,
    answerBody(answer, outcome, ctx),
  );
  const save = () => saveTurn(deps, ctx, answer.text, success);
  let failure: AgentError | undefined;
  try {
    if (await save()) {
      ctx.finished(200, outcome);
      return { outcome, failure };
    }
    failure = new AgentError("session_not_found", "session not found");
  } catch (error) {
    if (deps.recovery && idempotentSave(deps) && outcomeUnknown(error)) {
      recoverSave(deps, deps.recovery, ctx, outcome, save, error);
      ctx.finished(200, outcome);
      return { outcome, failure };
    }
    failure = storeError(error);
    // Unknown whether it landed: the row is written, the key stays held (its lease ends it).
    if (outcomeUnknown(error)) return await unsettled(deps, ctx, { ...outcome, error: failure });
  }
  await meter(deps, ctx, failure.status, { ...outcome, error: failure });
  return { outcome, failure };
}

/** The row of a failed turn whose Idempotency-Key must stay held. */
async function unsettled(
  deps: AnswerDeps,
  ctx: TurnContext,
  outcome: Outcome & { error: AgentError },
) {
  await deps.usage.record(
    usageEvent(deps.settings, ctx.facts, outcome, deps.now() - ctx.facts.started),
  );
  ctx.finished(outcome.error.status, outcome);
  return { outcome, failure: outcome.error };
}

/** One try of the save; the usage row goes with it or right after. False: the session is someone else's. */
async function saveTurn(deps: AnswerDeps, ctx: TurnContext, text: string, success: UsageEvent) {
  const usage = deps.usage.enabled ? success : undefined;
  const { key } = ctx.turn;
  const saved = await deps.sessions.append(key, ctx.body.message, text, ctx.facts.requestId, usage);
  if (saved.owned && !saved.usageLogged) await deps.usage.record(success);
  return saved.owned;
}

/** Saves are idempotent by request id with Redis, and with the usage row (agent_finish_turn). */
function idempotentSave(deps: AnswerDeps): boolean {
  return deps.settings.sessionStore === "redis" || deps.usage.enabled;
}

/**
 * Retries the save until it lands (then its row settles the key), or until
 * the turn's deadline has passed again: then the row says session_store_error
 * and the key is left to its lease (whether the save landed is still unknown).
 */
function recoverSave(
  deps: AnswerDeps,
  recovery: Pick<Recovery, "retry">,
  ctx: TurnContext,
  outcome: Outcome,
  save: () => Promise<boolean>,
  error: unknown,
) {
  const failed = (code: AgentError) =>
    usageEvent(
      deps.settings,
      ctx.facts,
      { ...outcome, error: code },
      deps.now() - ctx.facts.started,
    );
  recovery.retry({
    name: "turn save",
    requestId: ctx.facts.requestId,
    attempt: async () => {
      if (await save()) return;
      const lost = new AgentError("session_not_found", "session not found");
      await deps.usage.record(settle(failed(lost), ctx.turn.idempotency));
    },
    until: deps.now() + deps.settings.turnDeadlineSeconds * 1000,
    giveUp: () => deps.usage.record(failed(storeError(error))),
  });
}

/** The JSON body of an answered turn; also what its Idempotency-Key stores. */
function answerBody(answer: ModelAnswer, billed: Outcome, ctx: TurnContext): StoredAnswer {
  return {
    session_id: ctx.turn.key.sessionId,
    message: answer.text,
    ...summary(answer, billed, ctx),
  };
}

/** The answer's own usage for the client (as reported, else estimated); retries are not its tokens. */
function summary(answer: ModelAnswer, billed: Outcome, ctx: TurnContext) {
  const { prompt_tokens, completion_tokens, total_tokens } = answer.usage ?? billed.usage!;
  return {
    usage: { prompt_tokens, completion_tokens, total_tokens },
    model: answer.model,
    request_id: ctx.facts.requestId,
  };
}

/**
 * The client left before the model was called (during admission): nothing
 * was sent upstream, so nothing is billed.
 */
async function goneBeforeCall(deps: AnswerDeps, ctx: TurnContext): Promise<Response | undefined> {
  if (!ctx.clientSignal.aborted) return undefined;
  const closed = { code: "client_closed" as const, detail: "client went away during admission" };
  await meter(deps, ctx, 499, { error: closed });
  return new Response(null, { status: 499 });
}

/**
 * The turn's deadline passed while the model was still answering: the
 * client is answered at once, the row (its estimate may load the tokenizer)
 * follows, kept alive like the rest of the turn's work.
 */
function meterLate(deps: AnswerDeps, ctx: TurnContext, text: string): AgentError {
  const late = new AgentError("openai_error", "the assistant took too long to answer, try again", {
    detail: `turn deadline of ${deps.settings.turnDeadlineSeconds} s passed`,
  });
  const work = estimate(deps, ctx, text)
    .then((usage) => meter(deps, ctx, late.status, { usage, estimated: true, error: late }))
    .catch(() => {});
  deps.extendLifetime?.(work);
  return late;
}

/**
 * The model call failed before any answer reached the client: 499 if it
 * left, else 502. A call cut off after it was sent (the client gone, the
 * deadline) is metered with its estimated prompt: the upstream may bill it.
 */
async function callFailed(deps: AnswerDeps, ctx: TurnContext, error: unknown, during: string) {
  if (ctx.clientSignal.aborted) {
    const usage = await estimate(deps, ctx, "");
    const closed = { code: "client_closed" as const, detail: `client went away ${during}` };
    await meter(deps, ctx, 499, { usage, estimated: true, error: closed });
    return new Response(null, { status: 499 });
  }
  if (ctx.deadline.aborted) {
    return errorResponse(meterLate(deps, ctx, ""), ctx.facts.requestId, ctx.headers);
  }
  const failure = modelError(error);
  await meter(deps, ctx, failure.status, await failed(deps, ctx, error, failure));
  return errorResponse(failure, ctx.facts.requestId, ctx.headers);
}

export async function answerJson(deps: AnswerDeps, ctx: TurnContext): Promise<Response> {
  const gone = await goneBeforeCall(deps, ctx);
  if (gone) return gone;
  let answer: ModelAnswer;
  try {
    const signal = AbortSignal.any([ctx.clientSignal, ctx.deadline]);
    answer = await deps.model.complete(ctx.turn.messages, signal, ctx.turn.route);
  } catch (error) {
    return await callFailed(deps, ctx, error, "during the model call");
  }
  const { outcome, failure } = await persist(deps, ctx, answer);
  if (failure) return errorResponse(failure, ctx.facts.requestId, ctx.headers);
  return jsonResponse(200, answerBody(answer, outcome, ctx), ctx.headers);
}

/**
 * The first model event decides the status: an upstream that fails at once
 * is a 502 JSON error, not a 200 stream.
 */
export async function answerStream(deps: AnswerDeps, ctx: TurnContext): Promise<Response> {
  const gone = await goneBeforeCall(deps, ctx);
  if (gone) return gone;
  const upstream = new AbortController();
  const stopUpstream = () => upstream.abort();
  ctx.clientSignal.addEventListener("abort", stopUpstream, { once: true });
  ctx.deadline.addEventListener("abort", stopUpstream, { once: true });
  const events = deps.model.stream(ctx.turn.messages, upstream.signal, ctx.turn.route)[
    Symbol.asyncIterator
  ]();
  let first: IteratorResult<StreamEvent>;
  try {
    first = await events.next();
  } catch (error) {
    return await callFailed(deps, ctx, error, "before the first event");
  } finally {
    ctx.clientSignal.removeEventListener("abort", stopUpstream);
  }
  const { response, done } = streamSSE(ctx.headers, (sse) => {
    sse.signal.addEventListener("abort", stopUpstream, { once: true });
    return relay(deps, ctx, sse, first, events);
  });
  deps.extendLifetime?.(done);
  return response;
}

/** Relays model events to the client; ends with `done` or `error`, and meters once. */
async function relay(
  deps: AnswerDeps,
  ctx: TurnContext,
  sse: SSEWriter,
  first: IteratorResult<StreamEvent>,
  events: AsyncIterator<StreamEvent>,
): Promise<void> {
  sse.write("session", { session_id: ctx.turn.key.sessionId, request_id: ctx.facts.requestId });
  let text = "";
  let next: IteratorResult<StreamEvent> | undefined = first;
  try {
    while (true) {
      const item: IteratorResult<StreamEvent> = next ?? await events.next();
      next = undefined;
      if (item.done) {
        throw new AgentError("openai_error", "the assistant could not answer", {
          detail: "openai stream ended without an answer",
        });
      }
      if (item.value.type === "delta") {
        text += item.value.text;
        sse.write("delta", { text: item.value.text });
        continue;
      }
      return await finishStream(deps, ctx, sse, item.value.answer);
    }
  } catch (error) {
    await streamCutShort(deps, ctx, sse, error, text);
  } finally {
    await events.return?.().catch(() => {});
  }
}

async function finishStream(
  deps: AnswerDeps,
  ctx: TurnContext,
  sse: SSEWriter,
  answer: ModelAnswer,
) {
  // Saved and metered before the final event, so a client that has it can rely on both.
  const { outcome, failure } = await persist(deps, ctx, answer);
  if (failure) sse.write("error", errorBody(failure, ctx));
  else sse.write("done", { session_id: ctx.turn.key.sessionId, ...summary(answer, outcome, ctx) });
  sse.close();
}

async function streamCutShort(
  deps: AnswerDeps,
  ctx: TurnContext,
  sse: SSEWriter,
  error: unknown,
  text: string,
) {
  if (ctx.deadline.aborted && !sse.signal.aborted) {
    sse.write("error", errorBody(meterLate(deps, ctx, text), ctx));
    sse.close();
    return;
  }
  const usage = await estimate(deps, ctx, text);
  if (sse.signal.aborted) {
    const closed = { code: "client_closed" as const, detail: "client closed the stream" };
    await meter(deps, ctx, 499, { usage, estimated: true, error: closed });
    return;
  }
  const failure = error instanceof AgentError ? error : modelError(error);
  const modelAttempts = attemptsOf(error);
  await meter(deps, ctx, failure.status, { usage, estimated: true, error: failure, modelAttempts });
  sse.write("error", errorBody(failure, ctx));
  sse.close();
}

function errorBody(error: AgentError, ctx: TurnContext) {
  return { error: { code: error.code, message: error.message, request_id: ctx.facts.requestId } };
}

/** The stored answer again: the JSON body, or the SSE events with the whole text as one delta. */
export function replayAnswer(
  answer: StoredAnswer,
  body: { stream: boolean },
  headers: Record<string, string>,
  finished: (status: number, outcome: Outcome) => void,
): Response {
  const replayHeaders = { ...headers, [REPLAYED_HEADER]: "true" };
  finished(200, { model: answer.model, replayed: true });
  if (!body.stream) return jsonResponse(200, answer, replayHeaders);
  const { message, ...done } = answer;
  const { response } = streamSSE(replayHeaders, (sse) => {
    sse.write("session", { session_id: answer.session_id, request_id: answer.request_id });
    sse.write("delta", { text: message });
    sse.write("done", done);
    sse.close();
    return Promise.resolve();
  });
  return response;
}
