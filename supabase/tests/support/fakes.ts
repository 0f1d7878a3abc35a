/**
 * In-memory fakes of the handler's narrow interfaces (caller, begin turn,
 * session store, model, usage), for testing the whole error contract without
 * a database: each records what it was asked and answers what a test scripts.
 */
import { AgentError } from "../../functions/_shared/errors.ts";
import type { Caller } from "../../functions/_shared/auth.ts";
import type {
  BeginTurnArgs,
  BeginTurnResult,
  ChatMessage,
  UsageEvent,
} from "../../functions/agent-chat/turn.ts";
import type { AgentChatDeps, HandlerSettings } from "../../functions/agent-chat/handler.ts";
import type { ModelAnswer, ModelClient, StreamEvent } from "../../functions/agent-chat/model.ts";
import { createRefusalLedger } from "../../functions/agent-chat/refusals.ts";
import type { SessionStore } from "../../functions/agent-chat/session-store.ts";

export const USER = "11111111-1111-4111-8111-111111111111";
export const ORG = "22222222-2222-4222-8222-222222222222";
export const SERVICE_TOKEN = "sb_secret_fake";

export const ALLOWED = {
  allowed: true,
  scope: "user",
  limit: 10,
  remaining: 9,
  reset_seconds: 60,
  retry_after_seconds: 0,
};

export function answerOf(text: string): ModelAnswer {
  return {
    text,
    model: "gpt-fake",
    usage: { prompt_tokens: 11, completion_tokens: 7, total_tokens: 18, cached_prompt_tokens: 0 },
    unsettledAttempts: 0,
  };
}

export interface Fakes {
  deps: AgentChatDeps;
  usage: UsageEvent[];
  begins: BeginTurnArgs[];
  saved: Array<{ sessionId: string; user: string; assistant: string }>;
  modelCalls: number;
  logs: Array<{ level: string; event: string; fields: Record<string, unknown> }>;
  /** What the next begin-turn call answers (or throws). */
  begin: (args: BeginTurnArgs) => Promise<BeginTurnResult>;
  /** What the model does. */
  complete: (signal: AbortSignal) => Promise<ModelAnswer>;
  stream: (signal: AbortSignal) => AsyncIterable<StreamEvent>;
  append: () => Promise<{ owned: boolean; usageLogged: boolean }>;
  owned: boolean;
  history: ChatMessage[];
}

export const SETTINGS: HandlerSettings = {
  model: "gpt-fake",
  systemPrompt: "be brief",
  sessionStore: "supabase",
  sessionMaxMessages: 20,
  maxOutputTokens: 800,
  modelAttempts: 1,
  turnDeadlineSeconds: 120,
  sessionTtlSeconds: 3600,
  rateLimit: { org: 10, user: 10, ip: 10, windowSeconds: 60 },
  trustedProxyHops: 1,
  maxMessageChars: 100,
  maxBodyBytes: 4096,
  bodyTimeoutMs: 200,
  allowedOrigins: "*",
  userChannels: ["app", "web"],
  refusalLogIntervalSeconds: 60,
  transport: "fake",
};

function fakeAuthenticate(headers: Headers): Promise<Caller> {
  const bearer = /^Bearer (.+)$/.exec(headers.get("authorization") ?? "")?.[1];
  if (bearer === SERVICE_TOKEN) return Promise.resolve({ mode: "service" });
  if (bearer === "user-token") return Promise.resolve({ mode: "user", userId: USER });
  return Promise.reject(new AgentError("unauthorized", "invalid token"));
}

export function createFakes(settings: Partial<HandlerSettings> = {}, ipLimit = 30): Fakes {
  const f: Fakes = {
    usage: [],
    begins: [],
    saved: [],
    modelCalls: 0,
    logs: [],
    begin: () =>
      Promise.resolve({ outcome: "ok", rate_limit: ALLOWED, session_exists: false, history: [] }),
    complete: () => Promise.resolve(answerOf("hello")),
    stream: async function* () {
      yield { type: "delta", text: "hel" };
      yield { type: "delta", text: "lo" };
      yield { type: "done", answer: answerOf("hello") };
    },
    append: () => Promise.resolve({ owned: true, usageLogged: false }),
    owned: true,
    history: [],
    deps: undefined as unknown as AgentChatDeps,
  };
  const sessions: SessionStore = {
    plan: (key, isNew) =>
      Promise.resolve({
        beginTurn: { p_session_id: key.sessionId, p_load_history: !isNew },
        owned: f.owned,
        history: () => f.history,
      }),
    append: async (key, user, assistant) => {
      const result = await f.append();
      if (result.owned) f.saved.push({ sessionId: key.sessionId, user, assistant });
      return result;
    },
  };
  const model: ModelClient = {
    complete: (_messages, signal) => {
      f.modelCalls++;
      return f.complete(signal);
    },
    stream: (_messages, signal) => {
      f.modelCalls++;
      return f.stream(signal);
    },
  };
  const usage = {
    enabled: true,
    record: (event: UsageEvent) => {
      f.usage.push(event);
      return Promise.resolve();
    },
  };
  f.deps = {
    settings: { ...SETTINGS, ...settings },
    authenticate: fakeAuthenticate,
    db: {
      beginTurn: (args) => {
        f.begins.push(args);
        return f.begin(args);
      },
    },
    sessions,
    model,
    usage,
    refusals: createRefusalLedger({ intervalMs: 60_000, ipLimit, write: usage.record }),
    log: (level, event, fields) => f.logs.push({ level, event, fields }),
  };
  return f;
}

/** A POST to the handler as the fake user (or as `token`), from `ip`. */
export function chatRequest(
  body: unknown,
  options: { token?: string | null; ip?: string; headers?: Record<string, string> } = {},
): Request {
  const token = options.token === undefined ? "user-token" : options.token;
  return new Request("http://fn.local/agent-chat", {
    method: "POST",
    headers: {
      "content-type": "application/json",
      "x-forwarded-for": options.ip ?? "203.0.113.7",
      ...(token ? { authorization: `Bearer ${token}` } : {}),
      ...options.headers,
    },
    body: typeof body === "string" ? body : JSON.stringify(body),
  });
}
