/**
 * Finding (adversarial review): `ops export --user` printed its JSON with
 * JSON.stringify, which escapes C0 controls but passes C1 controls (U+0085,
 * U+009B, an 8-bit CSI) and bidirectional overrides (U+202E) of a member's
 * stored messages to the operator's terminal as they are. It is printed
 * with the same inert JSON as every other command (the same value when
 * parsed).
 */
import postgres from "postgres";
import { assert, assertEquals } from "./assert.ts";
import { testUrls } from "../support/function-harness.ts";
import { runOps } from "../../../scripts/ops.ts";

Deno.test("ops export inert: a member's message with C1 and bidi controls is printed inert", async () => {
  const sql = postgres(testUrls().databaseUrl, { max: 1, onnotice: () => {} });
  const org = crypto.randomUUID();
  const user = crypto.randomUUID();
  const session = crypto.randomUUID();
  const hostile = "hi\u009b2J\u202eevil\u0085";
  try {
    await sql`insert into auth.users (id) values (${user})`;
    await sql`insert into public.org_memberships (org_id, user_id) values (${org}, ${user})`;
    await sql`select public.agent_end_turn(${session}::uuid, ${org}::uuid, ${user}::uuid, 'app', ${hostile}, 'ok', 3600, 20)`;
    let out = "";
    const code = await runOps(
      ["export", "--user", user, "--no-redis", "--db", testUrls().databaseUrl],
      (s) => (out += s + "\n"),
      (s) => (out += s + "\n"),
    );
    assertEquals(code, 0, out);
    // deno-lint-ignore no-control-regex -- no raw control character may reach the terminal
    assert(!/[\x00-\x09\x0b-\x1f\x7f-\x9f\u202e]/.test(out), out);
    const doc = JSON.parse(out);
    assertEquals(doc.sessions[0].messages[0].content, hostile, "the same value when parsed");
  } finally {
    await sql.end();
  }
});
