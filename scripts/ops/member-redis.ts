/**
 * A member's sessions in the Redis store, for erasure and export. The
 * member's index (`memberIndexKey`, written by the append script) names
 * their session ids; a session's owner and messages keys are read or
 * deleted only when the owner key names this member (or is gone). The same
 * client as the function's (Upstash REST or rediss://), with these scripts;
 * every key a script touches is passed as a key.
 */
import {
  connectRedis,
  type RedisConnection,
  resolveRedis,
} from "../../supabase/functions/agent-chat/redis-client.ts";
import {
  memberIndexKey,
  sessionKeys,
  turnsKey,
} from "../../supabase/functions/agent-chat/session-store.ts";
import { CliError } from "../cli.ts";

const MEMBER_SCRIPTS = {
  list: `return redis.call('ZRANGE', KEYS[1], 0, -1)`,
  // KEYS: owner, messages of each session; ARGV[1]: the user id.
  read: `
local out = {}
local suffix = ':' .. ARGV[1]
for i = 1, #KEYS, 2 do
  local owner = redis.call('GET', KEYS[i])
  if owner and string.sub(owner, -#suffix) == suffix then
    out[#out + 1] = {owner, redis.call('LRANGE', KEYS[i + 1], 0, -1), redis.call('TTL', KEYS[i + 1])}
  else
    out[#out + 1] = {'', {}, -2}
  end
end
return out
`,
  // KEYS[1]: the index, then owner, messages, append marks of each session; ARGV: user id, session ids.
  forget: `
local deleted = 0
local suffix = ':' .. ARGV[1]
for i = 2, #KEYS, 3 do
  local owner = redis.call('GET', KEYS[i])
  if (not owner) or string.sub(owner, -#suffix) == suffix then
    if redis.call('DEL', KEYS[i], KEYS[i + 1], KEYS[i + 2]) > 0 then deleted = deleted + 1 end
  end
end
for i = 2, #ARGV do redis.call('ZREM', KEYS[1], ARGV[i]) end
return {deleted, redis.call('ZCARD', KEYS[1])}
`,
} as const;

export type MemberRedis = RedisConnection<keyof typeof MEMBER_SCRIPTS>;

/** Sessions per script call, so no call carries thousands of keys. */
const CHUNK = 200;

/**
 * The Redis store to erase from or export: `--redis <url>`, else the
 * function's own variables (AI_AGENT_REDIS_URL, UPSTASH_REDIS_REST_URL and
 * their tokens), else the running dev stack's; undefined when none is set.
 */
export function connectMemberRedis(
  url: string | undefined,
  env: Record<string, string | undefined>,
): MemberRedis | undefined {
  const chosen = url ?? env.AI_AGENT_REDIS_URL ?? env.UPSTASH_REDIS_REST_URL;
  if (!chosen) return undefined;
  const problems: string[] = [];
  const resolved = resolveRedis({
    AI_AGENT_REDIS_URL: chosen,
    AI_AGENT_REDIS_TOKEN: env.AI_AGENT_REDIS_TOKEN,
    UPSTASH_REDIS_REST_TOKEN: env.UPSTASH_REDIS_REST_TOKEN,
    AI_AGENT_REDIS_ALLOW_INSECURE: env.AI_AGENT_REDIS_ALLOW_INSECURE === "true",
  }, problems);
  if (!resolved || problems.length > 0) throw new CliError(problems.join("; "));
  return connectRedis(resolved.url, resolved.token, MEMBER_SCRIPTS);
}

function chunks<T>(items: T[]): T[][] {
  const out: T[][] = [];
  for (let i = 0; i < items.length; i += CHUNK) out.push(items.slice(i, i + CHUNK));
  return out;
}

async function sessionIds(redis: MemberRedis, userId: string): Promise<string[]> {
  const ids = await redis.run("list", [memberIndexKey(userId)], []) as unknown[];
  return (ids ?? []).map(String);
}

/**
 * Deletes every indexed session of the member; returns how many existed.
 * A turn appended meanwhile re-indexes its session, so this repeats until
 * the index is empty (a few rounds at most).
 */
export async function forgetMemberSessions(redis: MemberRedis, userId: string): Promise<number> {
  let deleted = 0;
  for (let round = 0; round < 5; round++) {
    const ids = await sessionIds(redis, userId);
    let left = 0;
    for (const part of chunks(ids)) {
      const keys = [
        memberIndexKey(userId),
        ...part.flatMap((id) => [...sessionKeys(id), turnsKey(id)]),
      ];
      const [n, remaining] = await redis.run("forget", keys, [userId, ...part]) as [number, number];
      deleted += Number(n);
      left = Number(remaining);
    }
    if (left === 0) return deleted;
  }
  throw new CliError(
    `sessions of ${userId} kept appearing in Redis: is the member still chatting?`,
  );
}

export interface RedisSessionExport {
  id: string;
  org_id: string;
  store: "redis";
  expires_in_seconds: number;
  messages: Array<{ role: string; content: string }>;
}

function parse(raw: unknown): { role: string; content: string } | null {
  try {
    const m = JSON.parse(String(raw));
    return typeof m?.role === "string" && typeof m?.content === "string"
      ? { role: m.role, content: m.content }
      : null;
  } catch {
    return null;
  }
}

/** The member's indexed sessions with their messages. */
export async function exportMemberSessions(
  redis: MemberRedis,
  userId: string,
): Promise<RedisSessionExport[]> {
  const out: RedisSessionExport[] = [];
  for (const part of chunks(await sessionIds(redis, userId))) {
    const rows = await redis.run("read", part.flatMap((id) => sessionKeys(id)), [userId]) as Array<
      [string, unknown[], number]
    >;
    rows.forEach(([owner, messages, ttl], i) => {
      if (!owner) return;
      out.push({
        id: part[i]!,
        org_id: String(owner).slice(0, -(userId.length + 1)),
        store: "redis",
        expires_in_seconds: Number(ttl),
        messages: (messages ?? []).map(parse).filter((m) => m !== null),
      });
    });
  }
  return out;
}
