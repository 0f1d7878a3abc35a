/**
 * Privacy of logs: a recognisable secret sent in every field a client
 * controls (message, metadata keys and values, Idempotency-Key, the bearer
 * token, unknown fields, malformed and invalid bodies) never reaches the
 * function's output (every stdout and stderr line of agent-chat run as its
 * own process, info lines included) nor any table but the ones whose job is
 * to hold it: the conversation (agent_session_messages), the stored answers
 * and keys (ops.idempotency_keys) and the client's metadata in the usage
 * row (agent_usage_events.metadata.client).
 */
import { assert, assertEquals } from "./assert.ts";
import type { Harness, Member } from "../support/function-harness.ts";
import { withHarness } from "../support/test-helpers.ts";
import { functionProcess } from "../support/local-stack.ts";

/** agent-chat as its own process; every byte it prints is kept. */
async function spawnFunction(env: Record<string, string>) {
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", "--allow-all", "--no-check", "--unstable-no-legacy-abort", functionProcess],
    env: { ...env, NO_COLOR: "1", AGENT_CHAT_LOG_LEVEL: "info" },
    stdout: "piped",
    stderr: "piped",
    stdin: "null",
  }).spawn();
  let output = "";
  const drain = (stream: ReadableStream<Uint8Array>) =>
    (async () => {
      for await (const chunk of stream.pipeThrough(new TextDecoderStream())) output += chunk;
    })();
  const drained = Promise.all([drain(child.stdout), drain(child.stderr)]);
  const deadline = Date.now() + 30_000;
  let port: number | undefined;
  while (port === undefined) {
    if (Date.now() > deadline) throw new Error(`agent-chat did not start: ${output}`);
    port = Number(/\{"port":(\d+)\}/.exec(output)?.[1]) || undefined;
    await new Promise((r) => setTimeout(r, 50));
  }
  return {
    url: `http://127.0.0.1:${port}`,
    /** Stops it (pending usage rows and refusal rows are written first); everything it printed. */
    async stop(): Promise<string> {
      child.kill("SIGTERM");
      await child.status;
      await drained;
      return output;
    },
  };
}

function forgedToken(secret: string): string {
  const b64 = (o: unknown) => btoa(JSON.stringify(o)).replace(/=+$/, "");
  return `${b64({ alg: "HS256", typ: "JWT" })}.${b64({ sub: secret, exp: 9e9 })}.${btoa(secret)}`;
}

/** Every request a client could send with the secret in it, and the status it gets. */
function requests(m: Member, secret: string): Array<[string, number, RequestInit]> {
  const headers = { "content-type": "application/json", authorization: `Bearer ${m.token}` };
  const body = (b: unknown) => JSON.stringify({ org_id: m.orgId, ...(b as object) });
  const metadata = { note: secret, [secret]: { deep: secret } };
  const post = (b: string, h: Record<string, string> = {}): RequestInit => ({
    method: "POST",
    headers: { ...headers, ...h },
    body: b,
  });
  return [
    [
      "json turn",
      200,
      post(body({ message: `my pin ${secret}`, metadata }), { "idempotency-key": secret }),
    ],
    [
      "sse turn",
      200,
      post(body({ message: `again ${secret}`, metadata, stream: true }), {
        "idempotency-key": `${secret}-2`,
      }),
    ],
    ["token", 401, post(body({ message: "hi" }), { authorization: `Bearer ${secret}` })],
    [
      "forged jwt",
      401,
      post(body({ message: "hi" }), { authorization: `Bearer ${forgedToken(secret)}` }),
    ],
    ["bad json", 400, post(`{"message": "${secret}", "org_id": `)],
    ["unknown field", 400, post(body({ message: "hi", [secret]: secret }))],
    ["bad channel", 400, post(body({ message: "hi", channel: secret }))],
    ["bad session", 400, post(body({ message: "hi", session_id: secret }))],
    ["long metadata key", 400, post(body({ message: "hi", metadata: { [secret.repeat(3)]: 1 } }))],
    [
      "unstorable metadata",
      400,
      post(`{"org_id":"${m.orgId}","message":"hi","metadata":{"${secret}":"\\ud800"}}`),
    ],
    ["long message", 400, post(body({ message: `${secret} `.repeat(200) }))],
    ["long key", 400, post(body({ message: "hi" }), { "idempotency-key": secret.repeat(10) })],
  ];
}

/** Tables (and columns) where the secret shows up, other than where it belongs. */
async function tablesHolding(h: Harness, needle: string): Promise<string[]> {
  const tables = await h.sql<Array<{ name: string }>>`
    select format('%I.%I', n.nspname, c.relname) as name from pg_class c join pg_namespace n on n.oid = c.relnamespace
    where n.nspname in ('public', 'ops') and c.relkind in ('r', 'p') and not c.relispartition`;
  const owners: Record<string, string> = {
    "public.agent_session_messages": "null::jsonb",
    "ops.idempotency_keys": "null::jsonb",
    "public.agent_usage_events":
      "to_jsonb(t) - 'metadata' || jsonb_build_object('m', t.metadata - 'client')",
  };
  const found: string[] = [];
  for (const { name } of tables) {
    const row = owners[name] ?? "to_jsonb(t)";
    const [hit] = await h.sql.unsafe(
      `select count(*)::int as n from ${name} t where lower((${row})::text) like '%' || $1 || '%'`,
      [needle],
    );
    if (hit!.n > 0) found.push(name);
  }
  return found;
}

for (const store of ["supabase", "redis"] as const) {
  Deno.test(`privacy (${store} store): no secret a client sends reaches a log line or a table it does not belong in`, () =>
    withHarness({ store }, async (h) => {
      const fn = await spawnFunction({
        SUPABASE_URL: h.gateway.url,
        SUPABASE_SERVICE_ROLE_KEY: h.secretKey,
        SUPABASE_JWT_SECRET: h.auth.jwtSecret,
        SUPABASE_JWT_ISSUER: h.auth.issuer,
        OPENAI_API_KEY: "sk-privacy-test",
        OPENAI_BASE_URL: h.openai.baseURL,
        AI_AGENT_SESSION_STORE: store,
        AI_AGENT_REDIS_URL: h.redisUrl,
        AI_AGENT_TRUSTED_PROXY_HOPS: "1",
        AI_AGENT_RATE_LIMIT_MAX_REQUESTS: "1000",
      });
      let output = "";
      const org = crypto.randomUUID();
      const marker = crypto.randomUUID();
      const secret = `SeCrEt-${marker}`;
      try {
        // A member of its own per request: each refusal is the first of its kind, written whole.
        const count = requests(await h.member(org), secret).length;
        for (let i = 0; i < count; i++) {
          const [name, status, init] = requests(await h.member(org), secret)[i]!;
          const r = await fetch(fn.url, init);
          await r.body?.cancel();
          assertEquals(r.status, status, name);
        }
      } finally {
        output = await fn.stop();
      }
      const lines = output.split("\n").filter((l) => l.startsWith("{"));
      assert(lines.filter((l) => l.includes('"event":"request"')).length >= 12, output);
      assertEquals(
        lines.filter((l) => l.toLowerCase().includes(marker)),
        [],
        "no log line carries the secret",
      );
      assertEquals(
        await tablesHolding(h, marker),
        [],
        "no table outside its owners holds the secret",
      );
      const [kept] = await h.sql`select
        (select count(*)::int from public.agent_session_messages where content like ${
        "%" + marker + "%"
      }) as messages,
        (select count(*)::int from public.agent_usage_events where metadata -> 'client' ->> 'note' = ${secret}) as usage`;
      assertEquals(
        kept,
        { messages: store === "supabase" ? 4 : 0, usage: 2 },
        "the owners do hold it (the test sent it)",
      );
    }));
}
