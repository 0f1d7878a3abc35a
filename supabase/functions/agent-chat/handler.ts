/**
 * Owns the order of one request's steps and the one error boundary:
 *
 *   preflight/method → IP refusal limiter → authenticate (headers only) →
 *   read and validate the body → identify → admit (one begin-turn call) →
 *   answer as JSON or SSE (model call, save, usage row) → log line.
 *
 * Refusals before admission are written through the refusal ledger (never
 * one row per anonymous request); after admission the answer step writes the
 * turn's one usage row itself.
 */
import type { Caller } from "../_shared/auth.ts";
import { readBody } from "../_shared/body.ts";
import { clientIpFrom } from "../_shared/client-ip.ts";
import { AgentError, asAgentError } from "../_shared/errors.ts";
import { createCors, errorResponse, requestIds } from "../_shared/http.ts";
import type { Logger } from "../_shared/log.ts";
import { type AdmissionDeps, admit, identify, sessionKeyFor } from "./admission.ts";
import { type AnswerDeps, answerJson, answerStream, replayAnswer } from "./answer.ts";
import type { Config } from "./config.ts";
import { idempotencyClaim, REPLAYED_HEADER } from "./idempotency.ts";
import { RATE_LIMIT_HEADER_NAMES, rateLimitHeaders } from "./rate-limit.ts";
import { recordRefusal, recordReplay, type RefusalLedger } from "./refusals.ts";
import type { Recovery } from "./recovery.ts";
import { chatRequestSchema, parseChatRequest } from "./request.ts";
import { requestLogLine } from "./request-log.ts";
import type { Outcome, RequestFacts, StoredAnswer } from "./turn.ts";
import { turnFacts } from "./usage.ts";

export type HandlerSettings =
  & Pick<
    Config,
    | "model"
    | "systemPrompt"
    | "sessionStore"
    | "sessionMaxMessages"
    | "sessionTtlSeconds"
    | "rateLimit"
    | "trustedProxyHops"
    | "maxMessageChars"
    | "maxBodyBytes"
    | "bodyTimeoutMs"
    | "allowedOrigins"
    | "userChannels"
    | "maxOutputTokens"
    | "modelAttempts"
    | "turnDeadlineSeconds"
    | "refusalLogIntervalSeconds"
  >
  & { transport: string };

/** The handler's narrow dependencies; tests swap each for an in-memory fake. */
export interface AgentChatDeps {
  settings: HandlerSettings;
  authenticate(headers: Headers): Promise<Caller>;
  db: AdmissionDeps["db"];
  sessions: AdmissionDeps["sessions"] & AnswerDeps["sessions"];
  model: AnswerDeps["model"];
  usage: AnswerDeps["usage"];
  extendLifetime?: AnswerDeps["extendLifetime"];
  /** The durable retry of writes the stores did not take; woken by every request. */
  recovery?: Recovery | undefined;
  refusals: RefusalLedger;
  log: Logger;
  now?: () => number;
}

/** Deno.serve's second argument; only the peer address is used. */
export interface ConnInfo {
  remoteAddr?: { hostname?: string } | Deno.Addr;
}

export function createAgentChatHandler(deps: AgentChatDeps) {
  const { settings } = deps;
  const now = deps.now ?? (() => performance.now());
  const answerDeps: AnswerDeps = { ...deps, now };
  const rules = { schema: chatRequestSchema(settings.maxMessageChars), ...settings };
  const bodyLimits = { maxBytes: settings.maxBodyBytes, timeoutMs: settings.bodyTimeoutMs };
  const cors = agentChatCors(settings.allowedOrigins);
  const log = (facts: RequestFacts, status: number, outcome: Outcome) =>
    deps.log(...requestLogLine(settings, facts, status, outcome, now()));

  return async function handle(request: Request, info?: ConnInfo): Promise<Response> {
    deps.recovery?.nudge();
    const { requestId, clientRequestId } = requestIds(request.headers);
    const headers = responseHeaders(
      cors(request.headers.get("origin")),
      requestId,
      clientRequestId,
    );
    if (request.method === "OPTIONS") return new Response(null, { status: 204, headers });
    const connectionIp = clientIpFrom(request.headers, settings.trustedProxyHops, peerOf(info));
    let facts: RequestFacts = {
      requestId,
      clientRequestId,
      started: now(),
      arrivedAt: new Date().toISOString(),
      clientIp: connectionIp,
    };
    let caller: Caller | undefined;
    try {
      const blockedFor = deps.refusals.blockedFor(connectionIp);
      if (blockedFor > 0) throw floodRefusal(blockedFor);
      if (request.method !== "POST") throw notPost();
      caller = await deps.authenticate(request.headers);
      if (caller.mode === "user") facts = { ...facts, userId: caller.userId };
      const body = parseChatRequest(await readBody(request, bodyLimits), caller, rules);
      const who = identify(caller, body, connectionIp);
      const session = sessionKeyFor(body, who.userId);
      facts = turnFacts(facts, body, who, session.key.sessionId);
      const key = await idempotencyClaim(request.headers, body, requestId, settings);
      const turn = await admit(deps, body, who, session, requestId, key);
      if ("replay" in turn) return await replay(deps, facts, turn, body, headers, now(), log);
      const admitted = { ...facts, rateLimit: turn.rateLimit };
      return await (body.stream ? answerStream : answerJson)(answerDeps, {
        facts: admitted,
        body,
        turn,
        clientSignal: request.signal,
        deadline: AbortSignal.timeout(deadlineMs(settings, now() - facts.started)),
        headers: { ...headers, ...rateLimitHeaders(turn.rateLimit) },
        finished: (status, outcome) => log(admitted, status, outcome),
      });
    } catch (error) {
      const refusal = asAgentError(error);
      const refused = await recordRefusal(deps, caller, facts, refusal, now());
      log(refused, refusal.status, { error: refusal });
      if (refusal.code === "client_closed") return new Response(null, { status: 499 });
      return errorResponse(refusal, requestId, headers);
    }
  };
}

/** supabase-js's CORS headers, plus what this function reads and exposes. */
function agentChatCors(allowedOrigins: string) {
  return createCors({
    allowedOrigins,
    extraAllowHeaders: ["x-request-id", "idempotency-key"],
    exposeHeaders: [
      "x-request-id",
      "x-client-request-id",
      REPLAYED_HEADER,
      ...RATE_LIMIT_HEADER_NAMES,
    ],
  });
}

function responseHeaders(
  cors: Record<string, string>,
  requestId: string,
  clientRequestId: string | undefined,
): Record<string, string> {
  return {
    ...cors,
    "x-request-id": requestId,
    ...(clientRequestId ? { "x-client-request-id": clientRequestId } : {}),
  };
}

/** The stored answer again; the replay is counted like a refusal (it took a replay: slot). */
async function replay(
  deps: AgentChatDeps,
  facts: RequestFacts,
  turn: { replay: StoredAnswer; member: boolean },
  body: { stream: boolean },
  headers: Record<string, string>,
  now: number,
  log: (facts: RequestFacts, status: number, outcome: Outcome) => void,
): Promise<Response> {
  await recordReplay(deps, facts, turn, now);
  return replayAnswer(turn.replay, body, headers, (s, o) => log(facts, s, o));
}

/** What is left of the turn's deadline after `elapsedMs` (at least 1 ms). */
function deadlineMs(settings: Pick<HandlerSettings, "turnDeadlineSeconds">, elapsedMs: number) {
  return Math.max(1, settings.turnDeadlineSeconds * 1000 - elapsedMs);
}

function peerOf(info: ConnInfo | undefined): string | undefined {
  return info?.remoteAddr && "hostname" in info.remoteAddr ? info.remoteAddr.hostname : undefined;
}

function notPost(): AgentError {
  return new AgentError("method_not_allowed", "use POST", { headers: { allow: "POST, OPTIONS" } });
}

function floodRefusal(retryAfterSeconds: number): AgentError {
  return new AgentError("rate_limit", "too many refused requests from this address", {
    headers: { "retry-after": String(retryAfterSeconds) },
    scope: "ip",
  });
}
