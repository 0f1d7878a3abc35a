/**
 * Owns admission: who the turn is for, from where, in which session, and the
 * one begin-turn decision (membership, switches, opt-outs, token quotas,
 * budgets, rate limits, history). Returns the admitted turn as a value, or
 * throws the refusal as an AgentError whose `facts` say what was known when
 * it was refused.
 */
import type { Caller } from "../_shared/auth.ts";
import { addressBlock } from "../_shared/client-ip.ts";
import { AgentError } from "../_shared/errors.ts";
import type { TurnDatabase } from "./database.ts";
import { claimArgs, type IdempotencyClaim, idempotencyRefusal } from "./idempotency.ts";
import { decisionFromDatabase, rateLimitHeaders } from "./rate-limit.ts";
import type { ChatRequest } from "./request.ts";
import { type SessionStore, storeCall } from "./session-store.ts";
import type {
  BeginTurnResult,
  ChatMessage,
  ModelRoute,
  RateLimitDecision,
  SessionKey,
  StoredAnswer,
} from "./turn.ts";

export interface AdmissionSettings {
  rateLimit: { org: number; user: number; ip: number; windowSeconds: number };
  sessionMaxMessages: number;
  model: string;
  systemPrompt: string;
  /** The model call's max_completion_tokens: part of the turn's worst case. */
  maxOutputTokens: number;
  /** Model calls a turn may make and be billed for (1 + retries): each sends the prompt again. */
  modelAttempts: number;
}

/** After this long an unsettled token reservation stops counting (a turn never takes that long). */
export const RESERVATION_SECONDS = 600;

/**
 * A turn's worst case, a true upper bound for every model: one token per
 * UTF-8 byte (a byte-level BPE tokenizer never makes more tokens than bytes;
 * digits with commas come close), plus the chat format's 4 a message and 3
 * to prime the reply, for each of the `attempts` calls that may be billed,
 * plus the max output tokens. The database counts the history it reads alike
 * (agent_begin_turn, p_prompt_copies).
 */
export function reserveTokens(
  messages: ReadonlyArray<{ content: string }>,
  maxOutput: number,
  attempts = 1,
) {
  let prompt = 3;
  for (const m of messages) prompt += utf8.encode(m.content).length + 4;
  return prompt * attempts + maxOutput;
}
const utf8 = new TextEncoder();

export interface AdmissionDeps {
  settings: AdmissionSettings;
  db: Pick<TurnDatabase, "beginTurn">;
  sessions: Pick<SessionStore, "plan">;
}

export interface AdmittedTurn {
  key: SessionKey;
  clientIp: string | undefined;
  /** History plus the new user message: what the model is sent. */
  messages: ChatMessage[];
  rateLimit: RateLimitDecision;
  /** The Idempotency-Key this turn holds until its usage row settles it. */
  idempotency?: IdempotencyClaim | undefined;
  /** The tenant policy's model and fallbacks; absent: the environment's. */
  route?: ModelRoute | undefined;
}

/** Who the turn is for and from where: the token's user, or what a service caller asserted. */
export function identify(
  caller: Caller,
  body: ChatRequest,
  connectionIp: string | undefined,
): { userId: string; clientIp: string | undefined } {
  if (caller.mode === "user") return { userId: caller.userId, clientIp: connectionIp };
  return { userId: body.userId!, clientIp: body.clientIp };
}

export function sessionKeyFor(
  body: ChatRequest,
  userId: string,
): { key: SessionKey; isNew: boolean } {
  const isNew = body.sessionId === undefined;
  const sessionId = body.sessionId ?? crypto.randomUUID();
  return { key: { sessionId, orgId: body.orgId, userId, channel: body.channel }, isNew };
}

export async function admit(
  deps: AdmissionDeps,
  body: ChatRequest,
  who: { userId: string; clientIp: string | undefined },
  session: { key: SessionKey; isNew: boolean },
  requestId: string,
  idempotency?: IdempotencyClaim,
): Promise<AdmittedTurn | { replay: StoredAnswer; member: boolean }> {
  const plan = await storeCall(() => deps.sessions.plan(session.key, session.isNew));
  const { rateLimit: limits, sessionMaxMessages, model, systemPrompt, modelAttempts } =
    deps.settings;
  // The history a store already holds (Redis) is in the estimate; the
  // database adds the history it reads itself.
  const prompt = [{ content: systemPrompt }, ...plan.history({}), { content: body.message }];
  const begin = await storeCall(() =>
    deps.db.beginTurn({
      p_org_id: body.orgId,
      p_user_id: who.userId,
      // The ip: bucket is per address block: one IPv6 subscriber holds a whole /64.
      p_client_ip: who.clientIp ? addressBlock(who.clientIp) : null,
      p_channel: body.channel,
      ...plan.beginTurn,
      p_session_owned: plan.owned,
      p_org_limit: limits.org,
      p_user_limit: limits.user,
      p_ip_limit: limits.ip,
      p_window_seconds: limits.windowSeconds,
      p_max_messages: sessionMaxMessages,
      p_request_id: requestId,
      p_reserve_tokens: reserveTokens(prompt, deps.settings.maxOutputTokens, modelAttempts),
      p_model: model,
      p_reserve_seconds: RESERVATION_SECONDS,
      p_prompt_copies: modelAttempts,
      ...claimArgs(idempotency),
    })
  );
  if (begin.outcome === "replay") return { replay: begin.response, member: begin.member === true };
  const rateLimit = decide(begin, limits.windowSeconds);
  const history = plan.history(begin as { history?: ChatMessage[] });
  return {
    key: session.key,
    clientIp: who.clientIp,
    messages: [...history, { role: "user", content: body.message }],
    rateLimit,
    idempotency,
    route: routeOf(begin),
  };
}

/** The policy's model route from the begin-turn result, when a policy names a model. */
function routeOf(begin: BeginTurnResult): ModelRoute | undefined {
  if (begin.outcome !== "ok" || (!begin.model && !begin.model_fallbacks)) return undefined;
  return {
    model: begin.model ?? "",
    fallbacks: begin.model_fallbacks?.split(",").filter(Boolean),
  };
}

/**
 * The begin-turn outcome as the admitted decision, or the refusal it means.
 * A refusal says whether the database found the caller a member
 * (`member`): only a member's refusal row names the org.
 */
function decide(begin: BeginTurnResult, windowSeconds: number): RateLimitDecision {
  const rl = "rate_limit" in begin && begin.rate_limit
    ? decisionFromDatabase(begin.rate_limit, windowSeconds)
    : undefined;
  const headers = rl ? rateLimitHeaders(rl) : {};
  const member = { member: begin.member === true };
  switch (begin.outcome) {
    case "ok":
      return rl!;
    case "rate_limit":
      if ((begin.rate_limit as { never_fits?: boolean } | null)?.never_fits === true) {
        throw neverFits(headers, begin.rate_limit as { reserve_tokens?: number; limit?: number });
      }
      throw new AgentError("rate_limit", `rate limit reached for the ${rl!.scope} bucket`, {
        headers,
        scope: rl!.scope,
        ...member,
      });
    case "opt_out":
      throw new AgentError("opt_out", "the assistant is turned off for this account", {
        headers,
        ...member,
        detail: `opt-out scope ${begin.opt_out_scope}${
          begin.opt_out_channel ? ` channel ${begin.opt_out_channel}` : ""
        }`,
      });
    case "forbidden":
      throw new AgentError("forbidden", "not a member of this organization", {
        headers,
        member: false,
      });
    case "session_not_found":
      throw new AgentError("session_not_found", "session not found", { headers, ...member });
    case "idempotency_mismatch":
    case "request_in_progress":
      throw idempotencyRefusal(begin);
    case "assistant_disabled":
      throw new AgentError(
        "assistant_disabled",
        begin.message ?? "the assistant is not available right now",
        { detail: `switched off (${begin.disabled_scope})`, ...member },
      );
    case "budget_exceeded":
      throw new AgentError(
        "budget_exceeded",
        "this organization's monthly assistant budget is used up",
        {
          detail: budgetDetail(begin.budget),
          ...member,
        },
      );
    default:
      throw new AgentError("internal_error", "internal error", {
        detail: "unexpected begin-turn outcome",
      });
  }
}

/**
 * A turn larger than a token quota itself: waiting cannot help, so no
 * Retry-After is promised; a shorter conversation (a new session) or a
 * larger quota can. The refusal is the operator's doing: it costs nothing.
 */
function neverFits(
  headers: Record<string, string>,
  q: { reserve_tokens?: number; limit?: number },
): AgentError {
  const { "retry-after": _, ...rest } = headers;
  return new AgentError(
    "rate_limit",
    "this conversation is too long for the token quota: start a new session or ask for a larger quota",
    {
      headers: rest,
      scope: "tokens",
      member: true,
      detail: `turn reserves ${q.reserve_tokens} tokens, quota ${q.limit}`,
    },
  );
}

function budgetDetail(b: Extract<BeginTurnResult, { outcome: "budget_exceeded" }>["budget"]) {
  const budget = `${b.scope} budget ${b.budget_usd} USD`;
  if (b.unpriced_model) {
    return `${budget}: model ${b.unpriced_model} has no price in ops.model_prices`;
  }
  return `${budget}: spent ${b.spent_usd}, reserved ${b.reserved_usd}`;
}
