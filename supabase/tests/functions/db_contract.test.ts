/**
 * The TypeScript side of the database contract cannot drift from the
 * migrations: every argument the function sends exists in the Postgres
 * function it calls, and every usage field is a column. (`deno task check`
 * makes the samples below match the interfaces exactly.)
 */
import postgres from "postgres";
import { assertEquals } from "./assert.ts";
import { testUrls } from "../support/function-harness.ts";
import { CALL_PARAMETERS } from "../../functions/agent-chat/database.ts";
import type { BeginTurnArgs, EndTurnArgs, UsageEvent } from "../../functions/agent-chat/turn.ts";

const begin: Required<BeginTurnArgs> = {
  p_org_id: "",
  p_user_id: "",
  p_client_ip: null,
  p_channel: "",
  p_session_id: null,
  p_org_limit: 0,
  p_user_limit: 0,
  p_ip_limit: 0,
  p_window_seconds: 0,
  p_max_messages: 0,
  p_load_history: false,
  p_session_owned: null,
  p_idempotency_key: "",
  p_request_hash: "",
  p_request_id: null,
  p_reserve_tokens: 0,
  p_model: null,
  p_reserve_seconds: 0,
  p_prompt_copies: 1,
};
const end: Required<EndTurnArgs> = {
  p_session_id: "",
  p_org_id: "",
  p_user_id: "",
  p_channel: "",
  p_user_message: "",
  p_assistant_message: "",
  p_ttl_seconds: 0,
  p_max_messages: 0,
};
// `idempotency` is not a column: agent_log_usage settles the key with it.
const usage: Required<Omit<UsageEvent, "idempotency">> = {
  request_id: "",
  org_id: null,
  user_id: null,
  session_id: null,
  channel: null,
  model: null,
  prompt_tokens: null,
  cached_prompt_tokens: null,
  completion_tokens: null,
  total_tokens: null,
  event_count: 1,
  latency_ms: 0,
  success: true,
  error_code: null,
  error_message: null,
  metadata: {},
  created_at: "",
};

Deno.test("database contract: the arguments the function sends are the Postgres functions' arguments", async () => {
  const sql = postgres(testUrls().databaseUrl, { max: 1, onnotice: () => {} });
  try {
    const args = async (fn: string) =>
      (await sql`select p.proargnames as names from pg_proc p join pg_namespace n on n.oid = p.pronamespace
                 where n.nspname = 'public' and p.proname = ${fn}`)[0]!.names as string[];
    assertEquals(
      (await args("agent_begin_turn")).filter((a) => a !== "p_now").sort(),
      Object.keys(begin).sort(),
    );
    assertEquals(
      (await args("agent_end_turn")).filter((a) => a !== "p_now").sort(),
      Object.keys(end).sort(),
    );
    assertEquals((await args("agent_finish_turn")).sort(), [...Object.keys(end), "p_usage"].sort());
    const columns = (await sql`select column_name from information_schema.columns
                               where table_schema = 'public' and table_name = 'agent_usage_events'`)
      .map((r) => r.column_name as string);
    assertEquals(Object.keys(usage).filter((k) => !columns.includes(k)), []);
    // The direct transport calls positionally: its order is the declared one.
    for (const [fn, order] of Object.entries(CALL_PARAMETERS)) {
      assertEquals(await args(fn), [...order], `${fn}: positional order`);
    }
  } finally {
    await sql.end();
  }
});
