/**
 * Owns where a conversation's messages live. The Supabase store reads
 * history in the begin-turn call and writes through `agent_finish_turn` (the
 * turn and its usage row) or `agent_end_turn`; the Redis store keeps
 * `agent-chat:{<session id>}:owner` and `agent-chat:{<session id>}:messages`
 * (one hash slot per session), reads them before the begin-turn call (whose
 * p_session_owned says what it found, so a foreign session is refused and
 * charged exactly as with the Supabase store) and does every read and write
 * in one Lua script. The append also keeps the member's index of sessions,
 * `agent-chat:member:{<user id>}:sessions` (a sorted set scored by when each
 * owner key expires, living as long as the newest), which erasure and
 * export read (scripts/ops/member-redis.ts). A store call that fails (either
 * store, or the begin-turn call) is 503 `session_store_error` (`storeCall`,
 * `storeError`). The append marks its request id in
 * `agent-chat:{<session id>}:turns`, so a save the function sends again
 * (recovery.ts) appends once.
 */
import { AgentError, describe } from "../_shared/errors.ts";
import type { TurnDatabase } from "./database.ts";
import type { ChatMessage, SessionKey, UsageEvent } from "./turn.ts";

/** What a store knows about a session before the begin-turn call, and how it gets the history. */
export interface SessionPlan {
  /** The begin-turn arguments about the session. */
  beginTurn: { p_session_id: string | null; p_load_history: boolean };
  /**
   * false: the store already knows the session is someone else's (Redis).
   * Sent as p_session_owned: the begin-turn call refuses it in its order
   * (membership, opt-outs, then the session) and charges it as the Supabase
   * store's own ownership check is charged.
   */
  owned: boolean;
  /** The stored history, from the begin-turn result or the store's own read. */
  history(begin: { history?: ChatMessage[] | null }): ChatMessage[];
}

export interface SessionStore {
  plan(key: SessionKey, isNew: boolean): Promise<SessionPlan>;
  /**
   * Appends one turn. A store that can write `usage` in the same round trip
   * does so and says `usageLogged: true`; otherwise the caller logs it.
   * Idempotent by `requestId` (the Redis append; agent_finish_turn with its
   * usage row): a save sent again after an unknown outcome appends once.
   */
  append(
    key: SessionKey,
    user: string,
    assistant: string,
    requestId: string,
    usage?: UsageEvent,
  ): Promise<{ owned: boolean; usageLogged: boolean }>;
}

export interface SessionLimits {
  ttlSeconds: number;
  maxMessages: number;
}

export function createSupabaseSessionStore(db: TurnDatabase, limits: SessionLimits): SessionStore {
  return {
    plan: (key, isNew) =>
      Promise.resolve({
        beginTurn: { p_session_id: key.sessionId, p_load_history: !isNew },
        owned: true,
        history: (begin) => begin.history ?? [],
      }),
    async append(key, user, assistant, _requestId, usage) {
      const args = {
        p_session_id: key.sessionId,
        p_org_id: key.orgId,
        p_user_id: key.userId,
        p_channel: key.channel,
        p_user_message: user,
        p_assistant_message: assistant,
        p_ttl_seconds: limits.ttlSeconds,
        p_max_messages: limits.maxMessages,
      };
      if (usage) {
        const result = await db.finishTurn(args, usage);
        return { owned: result.outcome === "ok", usageLogged: result.usage_logged === true };
      }
      const result = await db.endTurn(args);
      return { owned: result.outcome === "ok", usageLogged: false };
    },
  };
}

/** Runs a Lua script by SHA, loading it on NOSCRIPT; both Redis clients provide this. */
export interface RedisScriptRunner<Name extends string = "load" | "append"> {
  run(script: Name, keys: string[], args: string[]): Promise<unknown>;
}

export const LOAD_SCRIPT = `
local owner = redis.call('GET', KEYS[1])
if owner and owner ~= ARGV[1] then return {0, {}} end
local n = tonumber(ARGV[2])
if n == 0 then return {1, {}} end
return {1, redis.call('LRANGE', KEYS[2], -n, -1)}
`;

export const APPEND_SCRIPT = `
local owner = redis.call('GET', KEYS[1])
if owner and owner ~= ARGV[1] then return 0 end
if redis.call('ZADD', KEYS[4], 'NX', ARGV[8], ARGV[9]) == 0 then return 1 end
redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', tonumber(ARGV[8]) - tonumber(ARGV[10]))
redis.call('EXPIRE', KEYS[4], ARGV[10])
local max = tonumber(ARGV[4])
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[6])
local now = tonumber(ARGV[8])
redis.call('ZADD', KEYS[3], now + tonumber(ARGV[6]), ARGV[7])
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now)
redis.call('EXPIRE', KEYS[3], ARGV[6])
if max == 0 then
  redis.call('DEL', KEYS[2])
  return 1
end
redis.call('RPUSH', KEYS[2], ARGV[2], ARGV[3])
redis.call('LTRIM', KEYS[2], -max, -1)
redis.call('EXPIRE', KEYS[2], ARGV[5])
return 1
`;

/**
 * The owner key outlives the messages (30 × the TTL, at least 30 days), so a
 * session id cannot be taken over by another user soon after it expires.
 */
export function ownerTtlSeconds(ttlSeconds: number): number {
  return Math.max(ttlSeconds * 30, 30 * 86400);
}

export function sessionKeys(sessionId: string): [string, string] {
  return [`agent-chat:{${sessionId}}:owner`, `agent-chat:{${sessionId}}:messages`];
}

/**
 * The request ids of the session's recent appends (a sorted set by time, the
 * session's hash slot), so a save sent again appends once.
 */
export function turnsKey(sessionId: string): string {
  return `agent-chat:{${sessionId}}:turns`;
}

/** How long a turn's append mark is kept: longer than any retry of its save. */
export const TURN_MARK_SECONDS = 3600;

/** The member's index of session ids (scored by owner-key expiry, in seconds). */
export function memberIndexKey(userId: string): string {
  return `agent-chat:member:{${userId}}:sessions`;
}

function parseMessage(raw: unknown): ChatMessage | null {
  try {
    const m = typeof raw === "string" ? JSON.parse(raw) : raw;
    if ((m?.role === "user" || m?.role === "assistant") && typeof m.content === "string") {
      return { role: m.role, content: m.content };
    }
  } catch {
    // A corrupt entry is skipped rather than failing the whole conversation.
  }
  return null;
}

export function createRedisSessionStore(
  redis: RedisScriptRunner,
  limits: SessionLimits,
): SessionStore {
  const owner = (k: SessionKey) => `${k.orgId}:${k.userId}`;
  const plan = (owned: boolean, history: ChatMessage[]): SessionPlan => ({
    beginTurn: { p_session_id: null, p_load_history: false },
    owned,
    history: () => history,
  });
  return {
    async plan(key, isNew) {
      if (isNew) return plan(true, []);
      const result = await redis.run("load", sessionKeys(key.sessionId), [
        owner(key),
        String(limits.maxMessages),
      ]) as [number, unknown[]];
      if (Number(result[0]) !== 1) return plan(false, []);
      const history = (result[1] ?? []).map(parseMessage).filter((m): m is ChatMessage =>
        m !== null
      );
      return plan(true, history);
    },
    async append(key, user, assistant, requestId) {
      const keys = [
        ...sessionKeys(key.sessionId),
        memberIndexKey(key.userId),
        turnsKey(key.sessionId),
      ];
      const result = await redis.run("append", keys, [
        owner(key),
        JSON.stringify({ role: "user", content: user }),
        JSON.stringify({ role: "assistant", content: assistant }),
        String(limits.maxMessages),
        String(limits.ttlSeconds),
        String(ownerTtlSeconds(limits.ttlSeconds)),
        key.sessionId,
        String(Math.floor(Date.now() / 1000)),
        requestId,
        String(TURN_MARK_SECONDS),
      ]);
      return { owned: Number(result) === 1, usageLogged: false };
    },
  };
}

/** A failed call to a store is a 503: the client may try again. */
export async function storeCall<T>(call: () => Promise<T>): Promise<T> {
  try {
    return await call();
  } catch (error) {
    throw storeError(error);
  }
}

export function storeError(cause: unknown): AgentError {
  return new AgentError("session_store_error", "the conversation store is unavailable, try again", {
    detail: describe(cause),
  });
}
