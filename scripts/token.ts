/**
 * `deno task token --user <uuid> --org <uuid> [--hours 24] [--role member]`
 * Signs a user token with the local stack's Auth key and makes the user a
 * member of the org in the local database (creating the auth.users row).
 * Needs `npm run dev` running. The token goes to stdout, the rest to stderr.
 */
import postgres from "postgres";
import { createAuthStandIn } from "../supabase/tests/stand-ins/auth.ts";
import { CliError, numberFlag, parseCommand, runCommand, uuidFlag } from "./cli.ts";
import { readState, signingKey } from "./dev-state.ts";

const usage = `usage: deno task token [--user <uuid>] [--org <uuid>] [--hours 24] [--role member]

Mints a user token signed by the running local stack's Auth key (npm run dev)
and makes the user a member of the org.
  --user   the user id (default: a new one)
  --org    the org to join (default: none)
  --hours  how long the token is valid, 0 < hours ≤ 8760 (default 24)
  --role   the membership role (default member)`;

await runCommand(async () => {
  const { values } = parseCommand({
    usage,
    options: {
      user: { type: "string" },
      org: { type: "string" },
      hours: { type: "string", default: "24" },
      role: { type: "string", default: "member" },
    },
  }, Deno.args);
  if (values.help) return console.log(usage);
  const user = values.user === undefined ? crypto.randomUUID() : uuidFlag(values.user, "--user");
  const org = values.org === undefined ? undefined : uuidFlag(values.org, "--org");
  const hours = numberFlag(values.hours, "--hours", { min: 0.01, max: 8760 });
  const state = await readState();
  if (!state) throw new CliError("the local stack is not running; start it with `npm run dev`");
  const sql = postgres(state.databaseUrl, { max: 1, onnotice: () => {}, connect_timeout: 5 });
  try {
    await sql`insert into auth.users (id, email) values (${user}, ${
      user + "@local.test"
    }) on conflict (id) do nothing`;
    if (org) {
      await sql`insert into public.org_memberships (org_id, user_id, role)
                values (${org}, ${user}, ${values.role}) on conflict do nothing`;
    }
  } finally {
    await sql.end({ timeout: 1 });
  }
  const port = new URL(state.functionUrl).port;
  const auth = await createAuthStandIn({
    signingKey: await signingKey(),
    issuer: `http://127.0.0.1:${port}/auth/v1`,
  });
  const token = await auth.userToken(user, { expiresInSeconds: Math.round(hours * 3600) });
  console.error(`user ${user}${org ? ` is a member of org ${org}` : ""}; token valid ${hours} h`);
  console.log(token);
});
