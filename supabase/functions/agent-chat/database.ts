/**
 * Owns the calls to Postgres on the request path (begin turn, end or finish
 * turn, log usage), behind one narrow interface with two transports: the Data API (supabase-js `rpc`, default on
 * hosted Supabase) and a direct Postgres connection (`postgres`, without
 * prepared statements so it is safe behind the transaction pooler). The Data
 * API sends named arguments, the direct transport the same values
 * positionally; both return the same JSON.
 */
import type { SupabaseClient } from "@supabase/supabase-js";
import postgres, { type Sql } from "postgres";
import type { BeginTurnArgs, BeginTurnResult, EndTurnArgs, UsageEvent } from "./turn.ts";

export interface DatabaseEnv {
  SUPABASE_URL?: string | undefined;
  SUPABASE_DB_URL?: string | undefined;
  AI_AGENT_DATABASE_URL?: string | undefined;
  AI_AGENT_DB_TRANSPORT?: "rpc" | "postgres" | undefined;
}

export type DatabaseConnection =
  | { transport: "rpc"; url: string; key: string }
  | { transport: "postgres"; url: string };

/**
 * The transport rule: a direct URL (AI_AGENT_DATABASE_URL, or SUPABASE_DB_URL
 * when AI_AGENT_DB_TRANSPORT=postgres) means the direct transport; otherwise
 * the Data API at SUPABASE_URL with a service key.
 */
export function resolveDatabase(
  e: DatabaseEnv,
  serviceKeys: string[],
  problems: string[],
): DatabaseConnection {
  const direct = e.AI_AGENT_DATABASE_URL ??
    (e.AI_AGENT_DB_TRANSPORT === "postgres" ? e.SUPABASE_DB_URL : undefined);
  if (
    e.AI_AGENT_DB_TRANSPORT === "postgres" ||
    (e.AI_AGENT_DB_TRANSPORT === undefined && direct)
  ) {
    if (!direct) {
      problems.push(
        "AI_AGENT_DB_TRANSPORT=postgres needs AI_AGENT_DATABASE_URL or SUPABASE_DB_URL",
      );
    }
    return { transport: "postgres", url: direct ?? "" };
  }
  if (!e.SUPABASE_URL) {
    problems.push("SUPABASE_URL: required for the Data API transport");
  }
  if (serviceKeys.length === 0) {
    problems.push(
      "SUPABASE_SERVICE_ROLE_KEY or SUPABASE_SECRET_KEYS: required for the Data API transport",
    );
  }
  return {
    transport: "rpc",
    url: e.SUPABASE_URL ?? "",
    key: serviceKeys[0] ?? "",
  };
}

/** What the handler needs from Postgres; tests swap the transport, not this. */
export interface TurnDatabase {
  beginTurn(args: BeginTurnArgs): Promise<BeginTurnResult>;
  endTurn(args: EndTurnArgs): Promise<{ outcome: "ok" | "session_not_found" }>;
  /** endTurn plus the usage row, in one call (agent_finish_turn). */
  finishTurn(
    args: EndTurnArgs,
    usage: UsageEvent,
  ): Promise<{ outcome: "ok" | "session_not_found"; usage_logged: boolean }>;
  logUsage(event: UsageEvent): Promise<void>;
  /** The settlement of a usage row without the row (counters, reservation, key), when the usage log is off. */
  settleUsage(event: UsageEvent): Promise<void>;
  close(): Promise<void>;
}

export class DatabaseError extends Error {
  constructor(message: string, readonly code?: string) {
    super(message);
    this.name = "DatabaseError";
  }
}

export function createRpcDatabase(
  client: SupabaseClient,
  timeoutMs: number,
): TurnDatabase {
  async function call<T>(
    fn: string,
    args: Record<string, unknown>,
  ): Promise<T> {
    const { data, error } = await client.rpc(fn, args).abortSignal(
      AbortSignal.timeout(timeoutMs),
    );
    if (error) throw new DatabaseError(`${fn}: ${error.message}`, error.code);
    return data as T;
  }
  return {
    beginTurn: (args) => call<BeginTurnResult>("agent_begin_turn", { ...args }),
    endTurn: (args) => call("agent_end_turn", { ...args }),
    finishTurn: (args, usage) => call("agent_finish_turn", { ...args, p_usage: usage }),
    logUsage: async (event) => {
      await call("agent_log_usage", { p_event: event });
    },
    settleUsage: async (event) => {
      await call("agent_settle_usage", { p_event: event });
    },
    close: () => Promise.resolve(),
  };
}

/**
 * A SQL literal for the simple query protocol. Escape-string syntax (E'…')
 * makes the quoting independent of `standard_conforming_strings`. One pass
 * over the text: JSON.stringify never emits a raw NUL, so only strings are
 * checked for one.
 */
export function sqlLiteral(value: unknown): string {
  if (value === null || value === undefined) return "null";
  if (typeof value === "boolean") return value ? "true" : "false";
  if (typeof value === "number") {
    if (!Number.isSafeInteger(value)) {
      throw new DatabaseError(`not an integer: ${value}`);
    }
    return String(value);
  }
  let text: string;
  if (typeof value === "string") {
    if (value.includes("\0")) {
      throw new DatabaseError("text with a NUL character cannot be stored");
    }
    text = value;
  } else {
    text = JSON.stringify(value);
  }
  return `E'${text.replace(/[\\']/g, escapeChar)}'`;
}

/** A backslash and a quote are each doubled. */
const escapeChar = (c: string) => c + c;

/** The stored turn's arguments, shared by agent_end_turn and agent_finish_turn. */
const END_TURN_PARAMETERS = [
  "p_session_id",
  "p_org_id",
  "p_user_id",
  "p_channel",
  "p_user_message",
  "p_assistant_message",
  "p_ttl_seconds",
  "p_max_messages",
] as const;

/**
 * The parameters of each function the direct transport calls, in their
 * declared order (db_contract.test.ts checks it against pg_proc). Calls are
 * positional with untyped literals, each function having one signature:
 * the shortest text, and no named-argument matching or stored defaults to
 * expand on every call. `p_now` is sent as `now()`, its default.
 */
export const CALL_PARAMETERS = {
  agent_begin_turn: [
    "p_org_id",
    "p_user_id",
    "p_client_ip",
    "p_channel",
    "p_session_id",
    "p_org_limit",
    "p_user_limit",
    "p_ip_limit",
    "p_window_seconds",
    "p_max_messages",
    "p_load_history",
    "p_session_owned",
    "p_request_id",
    "p_reserve_tokens",
    "p_model",
    "p_reserve_seconds",
    "p_now",
    "p_idempotency_key",
    "p_request_hash",
    "p_prompt_copies",
  ],
  agent_end_turn: [...END_TURN_PARAMETERS, "p_now"],
  agent_finish_turn: [...END_TURN_PARAMETERS, "p_usage"],
  agent_log_usage: ["p_event"],
  agent_settle_usage: ["p_event"],
} as const;

type CalledFunction = keyof typeof CALL_PARAMETERS;

function callSql(fn: CalledFunction, args: Record<string, unknown>): string {
  const list = CALL_PARAMETERS[fn].map((name) =>
    name === "p_now" ? "now()" : sqlLiteral(args[name])
  );
  return `select public.${fn}(${list.join(",")}) as result`;
}

/**
 * Seconds a pool waits before its next connection attempt after `failures`
 * failed ones. postgres.js's default backoff grows with every failed connect
 * of the pool (3^n / 100 s, up to 20 s) and resets only on a success, so after
 * an outage of a few seconds the pool sat in its backoff long after the
 * server was back: calls started seconds after a restart waited for it and
 * timed out (503). Capped at half a second (with jitter, so isolates do not
 * reconnect in step): connection attempts are only made for calls waiting on
 * them, so an unavailable server sees at most a few per second per isolate.
 */
export function reconnectBackoff(failures: number): number {
  return Math.min(0.05 * 2 ** failures, 0.5) * (0.5 + Math.random() / 2);
}

/** The direct transport's pool. */
export function connectPostgres(url: string): Sql {
  return postgres(url, {
    prepare: false, // safe behind Supavisor's transaction mode
    max: 4,
    idle_timeout: 30,
    connect_timeout: 5,
    backoff: reconnectBackoff,
    onnotice: () => {},
  });
}

/**
 * Direct transport. The connection pool lives as long as the isolate. Each
 * call is one short simple-protocol query with inlined positional literals
 * (`CALL_PARAMETERS`): one round trip,
 * no prepared statement (safe behind Supavisor's transaction mode; with
 * bind parameters and no prepared statements the driver would need a
 * second round trip to learn the parameter types). The functions are
 * service-only: the URL's user must be allowed to execute them (the
 * `postgres` user of SUPABASE_DB_URL is, as their owner).
 */
export function createPostgresDatabase(
  connect: () => Sql,
  timeoutMs: number,
): TurnDatabase {
  let sql = connect();
  // A call that times out may sit on a connection that will never answer
  // (a socket left half-open by a database restart or a network cut). The
  // pool it came from is replaced, so later calls start on fresh
  // connections instead of queueing behind it.
  function replacePool(stale: Sql) {
    if (sql !== stale) return;
    sql = connect();
    stale.end({ timeout: 0 }).catch(() => {});
  }
  async function attempt<T>(pool: Sql, text: string, fn: string): Promise<T> {
    let timer: ReturnType<typeof setTimeout> | undefined;
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(() => {
        replacePool(pool);
        reject(new DatabaseError(`${fn}: no answer within ${timeoutMs} ms`));
      }, timeoutMs);
    });
    try {
      const rows = await Promise.race([quietly(pool.unsafe(text)), timeout]);
      return (rows[0] as unknown as { result: T } | undefined)?.result as T;
    } finally {
      clearTimeout(timer);
    }
  }
  async function call<T>(fn: CalledFunction, args: Record<string, unknown>): Promise<T> {
    const text = callSql(fn, args);
    const pool = sql;
    try {
      return await attempt<T>(pool, text, fn);
    } catch (error) {
      if (!diedBeforeRunning(error)) throw asDatabaseError(error);
      // A pooled connection a restart killed: the statement never ran; once more on a fresh pool.
      replacePool(pool);
      try {
        return await attempt<T>(sql, text, fn);
      } catch (again) {
        throw asDatabaseError(again);
      }
    }
  }
  return {
    beginTurn: (args) => call("agent_begin_turn", { ...args }),
    endTurn: (args) => call("agent_end_turn", { ...args }),
    finishTurn: (args, usage) => call("agent_finish_turn", { ...args, p_usage: usage }),
    logUsage: async (event) => {
      await call("agent_log_usage", { p_event: event });
    },
    settleUsage: async (event) => {
      await call("agent_settle_usage", { p_event: event });
    },
    close: () => sql.end({ timeout: 1 }),
  };
}

/**
 * The query as a promise whose failure, when it lost the race to the
 * timeout (its pool ended), is expected and never an unhandled rejection.
 */
function quietly<T>(query: PromiseLike<T>): Promise<T> {
  const promise = Promise.resolve(query);
  promise.catch(() => {});
  return promise;
}

/**
 * Errors of a connection that was already dead when the call was sent (the
 * server restarted or terminated the session): the single-statement call did
 * not run, or ran in a transaction the server rolled back, so it is safe to
 * send once more.
 */
const DEAD_CONNECTION = new Set([
  "CONNECTION_CLOSED",
  "CONNECTION_ENDED",
  "CONNECTION_DESTROYED",
  "ECONNRESET",
  "EPIPE",
  "57P01", // admin_shutdown: terminating connection due to administrator command
  "57P02", // crash_shutdown
]);

function diedBeforeRunning(error: unknown): boolean {
  const e = error as { code?: string; errno?: string } | undefined;
  return !(error instanceof DatabaseError) &&
    (DEAD_CONNECTION.has(e?.code ?? "") || DEAD_CONNECTION.has(e?.errno ?? ""));
}

function asDatabaseError(error: unknown): DatabaseError {
  if (error instanceof DatabaseError) return error;
  const e = error as { message?: string; code?: string };
  return new DatabaseError(e.message ?? String(error), e.code);
}
