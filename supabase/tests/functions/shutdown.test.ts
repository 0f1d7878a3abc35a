/**
 * A clean stop, on the function as its own process (as index.ts wires it):
 * SIGTERM stops taking requests, lets a turn under way finish, and writes
 * the refusal ledger's pending counts; after a restart the rows are all
 * there and the function answers again.
 */
import postgres from "postgres";
import { assert, assertEquals } from "./assert.ts";
import { createAuthStandIn, newSigningKey } from "../stand-ins/auth.ts";
import {
  functionProcess,
  type Service,
  spawnService,
  standInsProcess,
} from "../support/local-stack.ts";
import { testUrls } from "../support/function-harness.ts";

Deno.test("shutdown: SIGTERM finishes the turn under way and writes the counted refusals", async () => {
  const { databaseUrl } = testUrls();
  const sql = postgres(databaseUrl, { max: 2, onnotice: () => {} });
  const signingKey = await newSigningKey();
  const auth = await createAuthStandIn({ signingKey });
  const services: Service[] = [];
  try {
    const standIns = await spawnService(standInsProcess, {
      AGENT_CHAT_SIGNING_KEY: JSON.stringify(signingKey),
    });
    services.push(standIns);
    const env = {
      SUPABASE_URL: standIns.url,
      SUPABASE_JWKS_URL: `${standIns.url}/auth/v1/.well-known/jwks.json`,
      SUPABASE_JWT_ISSUER: auth.issuer,
      AI_AGENT_DATABASE_URL: databaseUrl,
      AI_AGENT_TRUSTED_PROXY_HOPS: "1",
      AI_AGENT_RATE_LIMIT_MAX_REQUESTS: "1000",
      // Far longer than the test: only the stop can write the counted refusals.
      AI_AGENT_REFUSAL_LOG_INTERVAL_SECONDS: "3600",
      AI_AGENT_IP_REFUSAL_LIMIT: "1000",
      OPENAI_API_KEY: "sk-shutdown",
      OPENAI_BASE_URL: `${standIns.url}/v1`,
      AGENT_CHAT_LOG_LEVEL: "error",
    };
    const first = await spawnService(functionProcess, env);
    services.push(first);
    const org = crypto.randomUUID();
    const user = crypto.randomUUID();
    await sql`insert into auth.users (id) values (${user})`;
    await sql`insert into public.org_memberships (org_id, user_id) values (${org}, ${user})`;
    const token = await auth.userToken(user);
    const ip = `192.0.2.${Math.floor(Math.random() * 250) + 1}`;
    const call = (url: string, headers: Record<string, string>) =>
      fetch(url, {
        method: "POST",
        headers: { "content-type": "application/json", "x-forwarded-for": ip, ...headers },
        body: JSON.stringify({ message: "a slow answer", org_id: org }),
      });

    for (let i = 0; i < 7; i++) {
      const res = await call(first.url, {});
      assertEquals(res.status, 401);
      await res.body?.cancel();
    }
    // A turn under way when the signal arrives: the upstream takes 1.5 s.
    await fetch(`${standIns.url}/script`, {
      method: "POST",
      body: JSON.stringify([{ kind: "reply", text: "finished anyway", latencyMs: 1500 }]),
    });
    const slow = call(first.url, { authorization: `Bearer ${token}` });
    await new Promise((resolve) => setTimeout(resolve, 300));
    const stopped = first.stop();
    const res = await slow;
    const body = await res.json();
    assertEquals([res.status, body.message], [200, "finished anyway"]);
    await stopped;
    const refused = await call(first.url, {}).then(() => false, () => true);
    assert(refused, "a stopped function takes no request");

    const rows = await sql`
      select event_count, metadata from public.agent_usage_events
      where error_code = 'anonymous_refusals'
        and metadata -> 'top_ips' @> ${sql.json([{ ip }])}`;
    assertEquals(rows.length, 1, "the counted refusals are written on stop");
    assertEquals(rows[0]!.event_count, 7);
    const turn =
      await sql`select success from public.agent_usage_events where request_id = ${body.request_id}`;
    assertEquals(turn.map((r) => r.success), [true]);

    // Restarted, it answers again; nothing was lost meanwhile.
    const second = await spawnService(functionProcess, env);
    services.push(second);
    const again = await call(second.url, { authorization: `Bearer ${token}` });
    assertEquals(again.status, 200);
    await again.body?.cancel();
  } finally {
    for (const s of services.reverse()) await s.stop();
    await sql.end({ timeout: 1 });
  }
});
