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
import { type AnswerDeps, answerJson, answerStream, type TurnContext } from "./answer.ts";
import type { Config } from "./config.ts";
import { RATE_LIMIT_HEADER_NAMES, rateLimitHeaders } from "./rate-limit.ts";
import type { RefusalLedger } from "./refusals.ts";
import { chatRequestSchema, parseChatRequest } from "./request.ts";
import { refusalFacts, requestLogLine } from "./request-log.ts";
import type { Outcome, RequestFacts } from "./usage.ts";
import { usageEvent } from "./usage.ts";

export type HandlerSettings =
  & Pick<
    Config,
    | "model"
    | "systemPrompt"
    | "sessionStore"
    | "sessionMaxMessages"
    | "rateLimit"
    | "trustedProxyHops"
    | "maxMessageChars"
    | "maxBodyBytes"
    | "bodyTimeoutMs"
    | "allowedOrigins"
    | "userChannels"
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
  const rules = {
    schema: chatRequestSchema(settings.maxMessageChars),
    userChannels: settings.userChannels,
  };
  const cors = createCors({
    allowedOrigins: settings.allowedOrigins,
    extraAllowHeaders: ["x-request-id", "idempotency-key"],
    exposeHeaders: ["x-request-id", "x-client-request-id", ...RATE_LIMIT_HEADER_NAMES],
  });
  const log = (facts: RequestFacts, status: number, outcome: Outcome) =>
    deps.log(...requestLogLine(settings, facts, status, outcome, now()));

  return async function handle(request: Request, info?: ConnInfo): Promise<Response> {
    const { requestId, clientRequestId } = requestIds(request.headers);
    const base = {
      ...cors(request.headers.get("origin")),
      "x-request-id": requestId,
      ...(clientRequestId ? { "x-client-request-id": clientRequestId } : {}),
    };
    if (request.method === "OPTIONS") return new Response(null, { status: 204, headers: base });
    const connectionIp = clientIpFrom(request.headers, settings.trustedProxyHops, peerOf(info));
    let facts: RequestFacts = {
      requestId,
      clientRequestId,
      started: now(),
      clientIp: connectionIp,
    };
    let caller: Caller | undefined;
    try {
      if (deps.refusals.blocked(connectionIp)) {
        throw floodRefusal(settings.refusalLogIntervalSeconds);
      }
      if (request.method !== "POST") throw notPost();
      caller = await deps.authenticate(request.headers);
      if (caller.mode === "user") facts = { ...facts, userId: caller.userId };
      const limits = { maxBytes: settings.maxBodyBytes, timeoutMs: settings.bodyTimeoutMs };
      const body = parseChatRequest(await readBody(request, limits), caller, rules);
      const who = identify(caller, body, connectionIp);
      const session = sessionKeyFor(body, who.userId);
      facts = {
        ...facts,
        ...who,
        orgId: body.orgId,
        sessionId: session.key.sessionId,
        channel: body.channel,
        stream: body.stream,
        clientMetadata: body.metadata,
      };
      const turn = await admit(deps, body, who, session);
      facts = { ...facts, rateLimit: turn.rateLimit };
      const ctx: TurnContext = {
        facts,
        body,
        turn,
        clientSignal: request.signal,
        headers: { ...base, ...rateLimitHeaders(turn.rateLimit) },
        finished: (status, outcome) => log(facts, status, outcome),
      };
      return await (body.stream ? answerStream : answerJson)(answerDeps, ctx);
    } catch (error) {
      const refusal = asAgentError(error);
      const refused = refusalFacts(facts, refusal);
      const outcome: Outcome = { error: refusal };
      if (!caller) deps.refusals.anonymous(refusal.code, connectionIp);
      else {
        const event = usageEvent(settings, refused, outcome, now() - facts.started);
        const key = `${refused.userId ?? caller.mode}:${refusal.code}:${
          refusal.options.scope ?? ""
        }`;
        await deps.refusals.refused(key, event);
      }
      log(refused, refusal.status, outcome);
      return errorResponse(refusal, requestId, base);
    }
  };
}

function peerOf(info: ConnInfo | undefined): string | undefined {
  return info?.remoteAddr && "hostname" in info.remoteAddr ? info.remoteAddr.hostname : undefined;
}

function notPost(): AgentError {
  return new AgentError("method_not_allowed", "use POST", { headers: { allow: "POST, OPTIONS" } });
}

function floodRefusal(intervalSeconds: number): AgentError {
  return new AgentError("rate_limit", "too many refused requests from this address", {
    headers: { "retry-after": String(intervalSeconds) },
    scope: "ip",
  });
}
