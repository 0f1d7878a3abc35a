/**
 * The three Postgres functions the request path calls, behind one narrow
 * interface with two transports: the Data API (supabase-js `rpc`, default on
 * hosted Supabase) and a direct Postgres connection (`postgres`, without
 * prepared statements so it is safe behind the transaction pooler). Both
 * send the same named arguments and return the same JSON.
 */
import type { SupabaseClient } from "@supabase/supabase-js";
import type { Sql } from "postgres";

export interface BeginTurnArgs {
  p_org_id: string;
  p_user_id: string;
  p_client_ip: string | null;
  p_channel: string;
  p_session_id: string | null;
  p_org_limit: number;
  p_user_limit: number;
  p_ip_limit: number;
  p_window_seconds: number;
  p_max_messages: number;
  p_load_history: boolean;
}

export interface EndTurnArgs {
  p_session_id: string;
  p_org_id: string;
  p_user_id: string;
  p_channel: string;
  p_user_message: string;
  p_assistant_message: string;
  p_ttl_seconds: number;
  p_max_messages: number;
}

export type BeginTurnResult =
  | { outcome: "ok"; rate_limit: unknown; session_exists: boolean; history: ChatMessage[] }
  | { outcome: "rate_limit"; rate_limit: unknown }
  | { outcome: "opt_out"; opt_out_scope: "org" | "user"; opt_out_channel: string | null }
  | { outcome: "forbidden" }
  | { outcome: "session_not_found" };

export interface ChatMessage {
  role: "user" | "assistant";
  content: string;
}

export interface UsageEvent {
  request_id: string;
  org_id: string | null;
  user_id: string | null;
  session_id: string | null;
  channel: string | null;
  model: string | null;
  prompt_tokens: number | null;
  cached_prompt_tokens: number | null;
  completion_tokens: number | null;
  total_tokens: number | null;
  latency_ms: number;
  success: boolean;
  error_code: string | null;
  error_message: string | null;
  metadata: Record<string, unknown>;
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
  close(): Promise<void>;
}

export class DatabaseError extends Error {
  constructor(message: string, readonly code?: string) {
    super(message);
    this.name = "DatabaseError";
  }
}

export function createRpcDatabase(client: SupabaseClient): TurnDatabase {
  async function call<T>(fn: string, args: Record<string, unknown>): Promise<T> {
    const { data, error } = await client.rpc(fn, args);
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
    close: () => Promise.resolve(),
  };
}

const BEGIN_SQL = `select public.agent_begin_turn(
  p_org_id => $1::uuid, p_user_id => $2::uuid, p_client_ip => $3::text, p_channel => $4::text,
  p_session_id => $5::uuid, p_org_limit => $6::integer, p_user_limit => $7::integer,
  p_ip_limit => $8::integer, p_window_seconds => $9::integer, p_max_messages => $10::integer,
  p_load_history => $11::boolean) as result`;
const END_SQL = `select public.agent_end_turn(
  p_session_id => $1::uuid, p_org_id => $2::uuid, p_user_id => $3::uuid, p_channel => $4::text,
  p_user_message => $5::text, p_assistant_message => $6::text, p_ttl_seconds => $7::integer,
  p_max_messages => $8::integer) as result`;
const FINISH_SQL = `select public.agent_finish_turn(
  p_session_id => $1::uuid, p_org_id => $2::uuid, p_user_id => $3::uuid, p_channel => $4::text,
  p_user_message => $5::text, p_assistant_message => $6::text, p_ttl_seconds => $7::integer,
  p_max_messages => $8::integer, p_usage => $9::text::jsonb) as result`;
const USAGE_SQL = `select public.agent_log_usage($1::text::jsonb)`;

function endTurnParams(a: EndTurnArgs): unknown[] {
  return [
    a.p_session_id,
    a.p_org_id,
    a.p_user_id,
    a.p_channel,
    a.p_user_message,
    a.p_assistant_message,
    a.p_ttl_seconds,
    a.p_max_messages,
  ];
}

/**
 * Direct transport. The connection pool lives as long as the isolate. The
 * functions are service-only: the URL's user must be allowed to execute them
 * (the `postgres` user of SUPABASE_DB_URL is, as their owner).
 */
export function createPostgresDatabase(sql: Sql): TurnDatabase {
  async function call<T>(text: string, params: unknown[]): Promise<T> {
    try {
      const rows = await sql.unsafe(text, params as never[], { prepare: false });
      return (rows[0] as unknown as { result: T } | undefined)?.result as T;
    } catch (error) {
      const e = error as { message?: string; code?: string };
      throw new DatabaseError(e.message ?? String(error), e.code);
    }
  }
  return {
    beginTurn: (a) =>
      call(BEGIN_SQL, [
        a.p_org_id,
        a.p_user_id,
        a.p_client_ip,
        a.p_channel,
        a.p_session_id,
        a.p_org_limit,
        a.p_user_limit,
        a.p_ip_limit,
        a.p_window_seconds,
        a.p_max_messages,
        a.p_load_history,
      ]),
    endTurn: (a) => call(END_SQL, endTurnParams(a)),
    finishTurn: (a, usage) => call(FINISH_SQL, [...endTurnParams(a), JSON.stringify(usage)]),
    logUsage: async (event) => {
      await call(USAGE_SQL, [JSON.stringify(event)]);
    },
    close: () => sql.end({ timeout: 1 }),
  };
}
