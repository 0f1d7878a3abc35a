/**
 * createAgentChatHandler: the whole request path of `agent-chat`, built from
 * injected dependencies so tests swap transports, never logic.
 *
 *   preflight/method → body → authenticate → client IP → begin turn (one
 *   Postgres call: opt-outs, membership, session owner, rate limits, history)
 *   → [Redis history] → model (JSON or SSE) → save turn → usage row.
 */
import type { Caller } from "./auth.ts";
import type { ChatMessage, TurnDatabase, UsageEvent } from "./database.ts";
import { AgentError, describe, type ErrorCode } from "./errors.ts";
import {
  corsHeaders,
  errorResponse,
  jsonResponse,
  rateLimitHeaders,
  requestIdFrom,
} from "./http.ts";
import type { Logger } from "./log.ts";
import { type ModelAnswer, type ModelClient, ModelError, type StreamEvent } from "./model.ts";
import { decisionFromDatabase, type RateLimitDecision } from "./rate-limit.ts";
import { type ChatRequest, chatRequestSchema, parseChatRequest, readBody } from "./request.ts";
import { clientIpFrom, normalizeIp } from "./client-ip.ts";
import type { SessionKey, SessionStore } from "./session-store.ts";
import type { UsageLogger } from "./usage.ts";

export interface HandlerSettings {
  model: string;
  sessionStore: "supabase" | "redis";
  sessionMaxMessages: number;
  rateLimit: { org: number; user: number; ip: number; windowSeconds: number };
  trustedProxyHops: number;
  maxMessageChars: number;
  maxBodyBytes: number;
  allowedOrigins: string;
}

export interface AgentChatDeps {
  settings: HandlerSettings;
  authenticate(headers: Headers): Promise<Caller>;
  db: TurnDatabase;
  sessions: SessionStore;
  model: ModelClient;
  usage: UsageLogger;
  log: Logger;
  now?: () => number;
}

/** Deno.serve's second argument; only the peer address is used. */
export interface ConnInfo {
  remoteAddr?: { hostname?: string } | Deno.Addr;
}

/** What a request accumulated on its way, for the usage row. */
interface Trace {
  requestId: string;
  started: number;
  orgId: string | null;
  userId: string | null;
  sessionId: string | null;
  channel: string | null;
  clientIp: string | undefined;
  stream: boolean;
  rateLimit?: RateLimitDecision;
  clientMetadata?: Record<string, unknown> | undefined;
}

/** A request that passed admission, with the messages for the model and the response headers. */
interface AdmittedTurn {
  request: Request;
  body: ChatRequest;
  trace: Trace;
  key: SessionKey;
  messages: ChatMessage[];
  headers: Record<string, string>;
}

const encoder = new TextEncoder();

export function createAgentChatHandler(deps: AgentChatDeps) {
  const { settings } = deps;
  const now = deps.now ?? (() => performance.now());
  const schema = chatRequestSchema(settings.maxMessageChars);

  function usageEvent(
    trace: Trace,
    outcome: {
      answer?: ModelAnswer;
      error?: { code: ErrorCode | "client_closed"; detail: string };
    },
  ): UsageEvent {
    const u = outcome.answer?.usage;
    return {
      request_id: trace.requestId,
      org_id: trace.orgId,
      user_id: trace.userId,
      session_id: trace.sessionId,
      channel: trace.channel,
      model: outcome.answer?.model ?? settings.model,
      prompt_tokens: u?.prompt_tokens ?? null,
      cached_prompt_tokens: u?.cached_prompt_tokens ?? null,
      completion_tokens: u?.completion_tokens ?? null,
      total_tokens: u?.total_tokens ?? null,
      latency_ms: Math.round(now() - trace.started),
      success: !outcome.error,
      error_code: outcome.error?.code ?? null,
      error_message: outcome.error?.detail ?? null,
      metadata: {
        store: settings.sessionStore,
        stream: trace.stream,
        ...(trace.clientIp ? { client_ip: trace.clientIp } : {}),
        ...(trace.rateLimit
          ? { rate_limit: { scope: trace.rateLimit.scope, remaining: trace.rateLimit.remaining } }
          : {}),
        ...(trace.clientMetadata ? { client: trace.clientMetadata } : {}),
      },
    };
  }

  async function fail(
    trace: Trace,
    error: unknown,
    cors: Record<string, string>,
  ): Promise<Response> {
    const agentError = error instanceof AgentError
      ? error
      : new AgentError("internal_error", "internal error", { detail: describe(error) });
    if (agentError.code === "internal_error") {
      deps.log("error", "internal_error", {
        request_id: trace.requestId,
        detail: agentError.detail,
      });
    }
    await deps.usage.record(
      usageEvent(trace, { error: { code: agentError.code, detail: agentError.detail } }),
    );
    const headers = { ...cors, ...(trace.rateLimit ? rateLimitHeaders(trace.rateLimit) : {}) };
    return errorResponse(agentError, trace.requestId, headers);
  }

  function storeError(detail: unknown): AgentError {
    return new AgentError(
      "session_store_error",
      "the conversation store is unavailable, try again",
      {
        detail: describe(detail),
      },
    );
  }

  /** Steps 2–5: who, may they, and what came before. */
  async function admit(
    request: Request,
    body: ChatRequest,
    caller: Caller,
    trace: Trace,
    info?: ConnInfo,
  ) {
    let userId: string;
    let clientIp: string | undefined;
    if (caller.mode === "user") {
      if (body.user_id !== undefined || body.client_ip !== undefined) {
        throw new AgentError(
          "forbidden",
          "user_id and client_ip may only be set by a server-side caller",
        );
      }
      userId = caller.userId;
      const peer = info?.remoteAddr && "hostname" in info.remoteAddr
        ? info.remoteAddr.hostname
        : undefined;
      clientIp = clientIpFrom(request.headers, settings.trustedProxyHops, peer);
    } else {
      if (!body.user_id) {
        throw new AgentError("invalid_request", "user_id: required with a service key");
      }
      userId = body.user_id.toLowerCase();
      clientIp = normalizeIp(body.client_ip);
    }
    trace.userId = userId;
    trace.clientIp = clientIp;
    const isNew = body.session_id === undefined;
    const sessionId = (body.session_id ?? crypto.randomUUID()).toLowerCase();
    trace.sessionId = sessionId;
    const key: SessionKey = { sessionId, orgId: trace.orgId!, userId, channel: body.channel };

    let begin;
    try {
      begin = await deps.db.beginTurn({
        p_org_id: key.orgId,
        p_user_id: userId,
        p_client_ip: clientIp ?? null,
        p_channel: body.channel,
        p_session_id: deps.sessions.historyFromBeginTurn ? sessionId : null,
        p_org_limit: settings.rateLimit.org,
        p_user_limit: settings.rateLimit.user,
        p_ip_limit: settings.rateLimit.ip,
        p_window_seconds: settings.rateLimit.windowSeconds,
        p_max_messages: settings.sessionMaxMessages,
        p_load_history: deps.sessions.historyFromBeginTurn && !isNew,
      });
    } catch (error) {
      throw storeError(error);
    }
    switch (begin.outcome) {
      case "opt_out":
        throw new AgentError("opt_out", "the assistant is turned off for this account", {
          detail: `opt-out scope ${begin.opt_out_scope}${
            begin.opt_out_channel ? ` channel ${begin.opt_out_channel}` : ""
          }`,
        });
      case "forbidden":
        throw new AgentError("forbidden", "not a member of this organization");
      case "session_not_found":
        throw new AgentError("session_not_found", "session not found");
      case "rate_limit": {
        trace.rateLimit = decisionFromDatabase(begin.rate_limit, settings.rateLimit.windowSeconds);
        throw new AgentError(
          "rate_limit",
          `rate limit reached for the ${trace.rateLimit.scope} bucket`,
        );
      }
      case "ok":
        break;
      default:
        throw new AgentError("internal_error", "internal error", {
          detail: "unexpected begin-turn outcome",
        });
    }
    trace.rateLimit = decisionFromDatabase(begin.rate_limit, settings.rateLimit.windowSeconds);

    let history: ChatMessage[] = [];
    if (deps.sessions.historyFromBeginTurn) {
      history = begin.history ?? [];
    } else if (!isNew) {
      let loaded;
      try {
        loaded = await deps.sessions.load(key);
      } catch (error) {
        throw storeError(error);
      }
      if (!loaded.owned) throw new AgentError("session_not_found", "session not found");
      history = loaded.history;
    }
    return { key, history: [...history, { role: "user" as const, content: body.message }] };
  }

  /** Saves the turn, and its usage row when the store can in the same round trip. */
  async function save(
    key: SessionKey,
    user: string,
    trace: Trace,
    answer: ModelAnswer,
  ): Promise<void> {
    const usage = deps.usage.enabled ? usageEvent(trace, { answer }) : undefined;
    let saved;
    try {
      saved = await deps.sessions.append(key, user, answer.text, usage);
    } catch (error) {
      throw storeError(error);
    }
    if (!saved.owned) throw new AgentError("session_not_found", "session not found");
    if (usage && !saved.usageLogged) await deps.usage.record(usage);
  }

  /** What the client learns about an answer besides its text: the same in JSON and in SSE. */
  function answerSummary(answer: ModelAnswer, trace: Trace) {
    const { prompt_tokens, completion_tokens, total_tokens } = answer.usage;
    return {
      usage: { prompt_tokens, completion_tokens, total_tokens },
      model: answer.model,
      request_id: trace.requestId,
    };
  }

  function modelError(error: unknown): AgentError {
    return new AgentError("openai_error", "the assistant could not answer, try again", {
      detail: error instanceof ModelError ? error.message : describe(error),
    });
  }

  async function answerJson(turn: AdmittedTurn): Promise<Response> {
    const { request, body, trace, key, messages, headers } = turn;
    let answer: ModelAnswer;
    try {
      answer = await deps.model.complete(messages, request.signal);
    } catch (error) {
      if (request.signal.aborted) {
        await deps.usage.record(
          usageEvent(trace, { error: { code: "client_closed", detail: "client went away" } }),
        );
        return new Response(null, { status: 499 });
      }
      throw modelError(error);
    }
    await save(key, body.message, trace, answer);
    return jsonResponse(200, {
      session_id: key.sessionId,
      message: answer.text,
      ...answerSummary(answer, trace),
    }, headers);
  }

  async function answerStream(turn: AdmittedTurn): Promise<Response> {
    const { request, body, trace, key, messages, headers } = turn;
    const upstream = new AbortController();
    const onClientGone = () => upstream.abort();
    request.signal.addEventListener("abort", onClientGone, { once: true });
    const events = deps.model.stream(messages, upstream.signal)[Symbol.asyncIterator]();
    // The first event decides the status: an upstream that fails at once is a 502, not a 200 stream.
    let first: IteratorResult<StreamEvent>;
    try {
      first = await events.next();
    } catch (error) {
      request.signal.removeEventListener("abort", onClientGone);
      throw modelError(error);
    }
    const sse = (event: string, data: unknown) =>
      encoder.encode(`event: ${event}\ndata: ${JSON.stringify(data)}\n\n`);
    let settled = false;
    let saving = false;
    const finish = async (outcome: Parameters<typeof usageEvent>[1]) => {
      if (settled || saving) return;
      settled = true;
      request.signal.removeEventListener("abort", onClientGone);
      await deps.usage.record(usageEvent(trace, outcome));
    };

    const stream = new ReadableStream<Uint8Array>({
      start(controller) {
        controller.enqueue(
          sse("session", { session_id: key.sessionId, request_id: trace.requestId }),
        );
      },
      async pull(controller) {
        try {
          const next = first ?? await events.next();
          first = undefined as unknown as IteratorResult<StreamEvent>;
          if (next.done) {
            throw new ModelError("openai stream ended without an answer");
          }
          const event = next.value;
          if (event.type === "delta") {
            controller.enqueue(sse("delta", { text: event.text }));
            return;
          }
          // Saved and logged before the final event, so a client that has it can rely on both.
          // While saving, a disconnect must not log a second row for this request.
          saving = true;
          await save(key, body.message, trace, event.answer);
          settled = true;
          request.signal.removeEventListener("abort", onClientGone);
          controller.enqueue(sse("done", {
            session_id: key.sessionId,
            ...answerSummary(event.answer, trace),
          }));
          controller.close();
        } catch (error) {
          if (upstream.signal.aborted) return; // cancel() logs the disconnect
          const agentError = error instanceof AgentError ? error : modelError(error);
          saving = false;
          await finish({ error: { code: agentError.code, detail: agentError.detail } });
          controller.enqueue(sse("error", {
            error: {
              code: agentError.code,
              message: agentError.message,
              request_id: trace.requestId,
            },
          }));
          controller.close();
        }
      },
      async cancel() {
        upstream.abort();
        await events.return?.().catch(() => {});
        await finish({ error: { code: "client_closed", detail: "client closed the stream" } });
      },
    });
    return new Response(stream, {
      status: 200,
      headers: {
        ...headers,
        "content-type": "text/event-stream; charset=utf-8",
        "cache-control": "no-cache",
        "x-accel-buffering": "no",
      },
    });
  }

  return async function handle(request: Request, info?: ConnInfo): Promise<Response> {
    const requestId = requestIdFrom(request.headers);
    const cors = corsHeaders(settings.allowedOrigins, request.headers.get("origin"));
    if (request.method === "OPTIONS") {
      return new Response(null, { status: 204, headers: { ...cors, "x-request-id": requestId } });
    }
    const trace: Trace = {
      requestId,
      started: now(),
      orgId: null,
      userId: null,
      sessionId: null,
      channel: null,
      clientIp: undefined,
      stream: false,
    };
    try {
      if (request.method !== "POST") {
        throw new AgentError("method_not_allowed", "use POST", {
          headers: { allow: "POST, OPTIONS" },
        });
      }
      const body = parseChatRequest(await readBody(request, settings.maxBodyBytes), schema);
      trace.orgId = body.org_id.toLowerCase();
      trace.channel = body.channel;
      trace.stream = body.stream;
      trace.clientMetadata = body.metadata;
      const caller = await deps.authenticate(request.headers);
      const { key, history } = await admit(request, body, caller, trace, info);
      const headers = { ...cors, ...rateLimitHeaders(trace.rateLimit!), "x-request-id": requestId };
      const turn = { request, body, trace, key, messages: history, headers };
      return body.stream ? await answerStream(turn) : await answerJson(turn);
    } catch (error) {
      return await fail(trace, error, cors);
    }
  };
}
