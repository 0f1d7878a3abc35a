/**
 * `deno task token -- --user <uuid> --org <uuid> [--hours 24] [--role member]`
 * Signs a user token with the local stack's Auth key and makes the user a
 * member of the org in the local database (creating the auth.users row).
 * Needs `deno task dev` running.
 */
import { parseArgs } from "node:util";
import postgres from "postgres";
import { createAuthStandIn } from "../supabase/tests/stand-ins/auth.ts";
import { readState, signingKey } from "./dev-state.ts";

const uuid = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;
const { values } = parseArgs({
  args: Deno.args.filter((a) => a !== "--"),
  options: {
    user: { type: "string" },
    org: { type: "string" },
    hours: { type: "string", default: "24" },
    role: { type: "string", default: "member" },
  },
});
const user = values.user ?? crypto.randomUUID();
const org = values.org;
if (!uuid.test(user) || (org !== undefined && !uuid.test(org))) {
  console.error(
    "usage: deno task token -- --user <uuid> --org <uuid> [--hours 24] [--role member]",
  );
  Deno.exit(2);
}
const state = await readState();
if (!state) {
  console.error("error: the local stack is not running; start it with `npm run dev`");
  Deno.exit(1);
}
const sql = postgres(state.databaseUrl, { max: 1, onnotice: () => {} });
try {
  await sql`insert into auth.users (id, email) values (${user}, ${
    user + "@local.test"
  }) on conflict (id) do nothing`;
  if (org) {
    await sql`insert into public.org_memberships (org_id, user_id, role) values (${org}, ${user}, ${values
      .role!})
              on conflict do nothing`;
  }
} finally {
  await sql.end();
}
const port = new URL(state.functionUrl).port;
const auth = await createAuthStandIn({
  signingKey: await signingKey(),
  issuer: `http://127.0.0.1:${port}/auth/v1`,
});
const token = await auth.userToken(user, { expiresInSeconds: Number(values.hours) * 3600 });
console.error(
  `user ${user}${org ? ` is a member of org ${org}` : ""}; token valid ${values.hours} h`,
);
console.log(token);
