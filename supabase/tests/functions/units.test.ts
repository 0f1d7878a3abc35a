/** Unit tests of the pure modules: configuration, client IP, request body, secrets. */
import { importCircles } from "../../../scripts/check-imports.ts";
import { assert, assertEquals, assertMatch } from "./assert.ts";
import { ConfigError, loadConfig } from "../../functions/agent-chat/config.ts";
import { addressBlock, clientIpFrom, normalizeIp } from "../../functions/_shared/client-ip.ts";
import { findUnstorable, MAX_JSON_DEPTH } from "../../functions/_shared/text.ts";
import { createRefusalLedger } from "../../functions/agent-chat/refusals.ts";
import type { UsageEvent } from "../../functions/agent-chat/turn.ts";
import { chatRequestSchema, parseChatRequest } from "../../functions/agent-chat/request.ts";
import { secretsEqual } from "../../functions/_shared/auth.ts";
import { AgentError, type ErrorCode } from "../../functions/_shared/errors.ts";

const base = {
  SUPABASE_URL: "https://abc.supabase.co",
  SUPABASE_SERVICE_ROLE_KEY: "key",
  OPENAI_API_KEY: "sk-x",
};

function configProblems(env: Record<string, string>): string[] {
  try {
    loadConfig(env);
    return [];
  } catch (error) {
    assert(error instanceof ConfigError);
    return error.problems;
  }
}

Deno.test("config: defaults, per-scope limits falling back to the shared max, empty strings unset", () => {
  const c = loadConfig({
    ...base,
    AI_AGENT_RATE_LIMIT_MAX_REQUESTS: "40",
    AI_AGENT_RATE_LIMIT_IP_MAX_REQUESTS: "100",
    AI_AGENT_MODEL: "",
  });
  assertEquals(c.rateLimit, { org: 40, user: 40, ip: 100, windowSeconds: 60 });
  assertEquals(c.model, "gpt-4.1-mini");
  assertEquals(c.sessionStore, "supabase");
  assertEquals(c.database, { transport: "rpc", url: "https://abc.supabase.co", key: "key" });
  assertEquals(c.jwtIssuer, "https://abc.supabase.co/auth/v1");
  assertEquals(c.userChannels, ["app", "web"]);
  assertEquals(c.bodyTimeoutMs, 10_000);
  assertEquals(c.jwksUrl, "https://abc.supabase.co/auth/v1/.well-known/jwks.json");
  assertEquals(c.trustedProxyHops, 1);
  assertEquals(c.usageLogEnabled, true);
});

Deno.test("config: every error names its variable", () => {
  assertMatch(
    configProblems({ ...base, AI_AGENT_RATE_LIMIT_MAX_REQUESTS: "many" }).join(),
    /AI_AGENT_RATE_LIMIT_MAX_REQUESTS/,
  );
  assertMatch(
    configProblems({ ...base, AI_AGENT_SESSION_STORE: "memcached" }).join(),
    /AI_AGENT_SESSION_STORE/,
  );
  assertMatch(
    configProblems({ ...base, AI_AGENT_SESSION_STORE: "redis" }).join(),
    /AI_AGENT_REDIS_URL/,
  );
  assertMatch(
    configProblems({
      ...base,
      AI_AGENT_SESSION_STORE: "redis",
      AI_AGENT_REDIS_URL: "redis://cache.example.com:6379",
    }).join(),
    /rediss:\/\//,
  );
  assertMatch(
    configProblems({
      ...base,
      AI_AGENT_SESSION_STORE: "redis",
      AI_AGENT_REDIS_URL: "https://x.upstash.io",
    }).join(),
    /AI_AGENT_REDIS_TOKEN/,
  );
  assertMatch(
    configProblems({ SUPABASE_URL: "https://abc.supabase.co" }).join(),
    /SUPABASE_SERVICE_ROLE_KEY/,
  );
  assertEquals(
    configProblems({
      ...base,
      AI_AGENT_SESSION_STORE: "redis",
      AI_AGENT_REDIS_URL: "redis://cache:6379",
      AI_AGENT_REDIS_ALLOW_INSECURE: "true",
    }),
    [],
  );
  assertEquals(
    configProblems({
      ...base,
      AI_AGENT_SESSION_STORE: "redis",
      UPSTASH_REDIS_REST_URL: "https://x.upstash.io",
      UPSTASH_REDIS_REST_TOKEN: "t",
    }),
    [],
  );
  const direct = loadConfig({
    SUPABASE_URL: "https://abc.supabase.co",
    OPENAI_API_KEY: "sk-x",
    AI_AGENT_DATABASE_URL: "postgres://u:p@db:6543/postgres",
  });
  assertMatch(configProblems({ ...base, OPENAI_API_KEY: "" }).join(), /OPENAI_API_KEY/);
  assertEquals(
    configProblems({ ...base, OPENAI_API_KEY: "", OPENAI_BASE_URL: "http://127.0.0.1:9999/v1" }),
    [],
  );
  assertEquals(direct.database, { transport: "postgres", url: "postgres://u:p@db:6543/postgres" });
  const secretKeys = loadConfig({
    SUPABASE_URL: "https://abc.supabase.co",
    OPENAI_API_KEY: "sk-x",
    SUPABASE_SECRET_KEYS: '{"default":"sb_secret_1"}',
  });
  assertEquals(secretKeys.serviceKeys, ["sb_secret_1"]);
});

Deno.test("client ip: the N-th X-Forwarded-For entry from the right, validated; never the forgeable left", () => {
  const h = new Headers({ "x-forwarded-for": "6.6.6.6, 41.186.0.7, 10.0.0.1" });
  assertEquals(clientIpFrom(h, 1, "9.9.9.9"), "10.0.0.1");
  assertEquals(clientIpFrom(h, 2, "9.9.9.9"), "41.186.0.7");
  assertEquals(clientIpFrom(h, 0, "9.9.9.9"), "9.9.9.9");
  assertEquals(clientIpFrom(h, 4, "9.9.9.9"), undefined);
  assertEquals(clientIpFrom(new Headers(), 1, "9.9.9.9"), undefined);
  assertEquals(
    clientIpFrom(new Headers({ "x-forwarded-for": "evil, <script>" }), 1, undefined),
    undefined,
  );
  assertEquals(normalizeIp("2001:DB8::0001"), "2001:db8::1");
  assertEquals(normalizeIp("[::1]:443"), "::1");
  assertEquals(normalizeIp("1.2.3.4:8080"), "1.2.3.4");
  assertEquals(normalizeIp("256.1.1.1"), undefined);
  assertEquals(normalizeIp("1.2.3"), undefined);
});

Deno.test("request body: trimmed, bounded, strict; service fields typed", () => {
  const rules = { schema: chatRequestSchema(10), userChannels: ["app", "web"] };
  const user = { mode: "user" as const, userId: crypto.randomUUID() };
  const org = crypto.randomUUID();
  const ok = parseChatRequest(JSON.stringify({ message: "  hi  ", org_id: org }), user, rules);
  assertEquals(ok.message, "hi");
  assertEquals(ok.channel, "app");
  assertEquals(ok.stream, false);
  const bad = (body: unknown) => {
    try {
      parseChatRequest(JSON.stringify(body), user, rules);
      return "";
    } catch (error) {
      assert(error instanceof AgentError);
      assertEquals(error.code, "invalid_request");
      return error.message;
    }
  };
  assertMatch(bad({ message: "x".repeat(11), org_id: org }), /at most 10/);
  assertMatch(bad({ message: "hi", org_id: org, extra: 1 }), /unknown field/);
  assertMatch(bad({ message: "hi", org_id: org, client_ip: "999.1.1.1" }), /client_ip/);
  assertMatch(bad({ message: "hi", org_id: org, stream: "yes" }), /stream/);
  assertMatch(bad({ message: 5, org_id: org }), /message/);
  assertMatch(bad({ message: "a\u0000b", org_id: org }), /NUL/);
  assertMatch(bad({ message: "hi", org_id: org, metadata: { k: "\u0000" } }), /NUL/);
  // Unpaired surrogates anywhere (Postgres refuses them in jsonb and text).
  const raw = (text: string) => {
    try {
      parseChatRequest(text, user, rules);
      return "";
    } catch (error) {
      assert(error instanceof AgentError);
      return `${error.code}: ${error.message}`;
    }
  };
  assertMatch(raw(`{"message":"a\\ud800b","org_id":"${org}"}`), /invalid_request: body.message/);
  assertMatch(
    raw(`{"message":"hi","org_id":"${org}","metadata":{"k\\udfff":1}}`),
    /invalid_request: body.metadata \(a key\)/,
  );
  assertMatch(
    raw(`{"message":"hi","org_id":"${org}","metadata":{"k":["\\ud83d"]}}`),
    /invalid_request: body.metadata.k.0/,
  );
  assertMatch(raw(`{"message":"hi","org_id":"${org}","channel":"\\udc00"}`), /invalid_request/);
  // A paired surrogate (an emoji) is fine; any UUID shape Supabase issues is accepted.
  assertEquals(raw(`{"message":"hi \\ud83d\\ude00","org_id":"${org}"}`), "");
  assertEquals(
    parseChatRequest(
      JSON.stringify({ message: "hi", org_id: "00000000-0000-0000-0000-00000000000A" }),
      user,
      rules,
    )
      .orgId,
    "00000000-0000-0000-0000-00000000000a",
  );
});

Deno.test("secrets compare equal only when identical", () => {
  assert(secretsEqual("sb_secret_abc", "sb_secret_abc"));
  assert(!secretsEqual("sb_secret_abc", "sb_secret_abd"));
  assert(!secretsEqual("sb_secret_abc", "sb_secret_ab"));
  assert(!secretsEqual("", "x"));
});

Deno.test("supabase/config.toml is valid for the Supabase CLI and leaves JWT checks to the function", async () => {
  const root = new URL("../../../", import.meta.url).pathname;
  const text = await Deno.readTextFile(`${root}supabase/config.toml`);
  assertMatch(text, /\[functions\.agent-chat\]\nenabled = true\nverify_jwt = false\n/);
  // `supabase status` reads the config before it looks for Docker; a bad file fails first.
  const out = await new Deno.Command(`${root}node_modules/.bin/supabase`, {
    args: ["status"],
    cwd: root,
    stdout: "piped",
    stderr: "piped",
    env: { SUPABASE_TELEMETRY_DISABLED: "1" },
  }).output();
  const text2 = new TextDecoder().decode(out.stdout) + new TextDecoder().decode(out.stderr);
  assert(!/failed to read config|Invalid TOML|failed to parse/i.test(text2), text2);
});

Deno.test("address blocks: IPv4 itself, IPv6 by /64, mapped IPv4 as IPv4, none as unknown", () => {
  assertEquals(addressBlock("203.0.113.7"), "203.0.113.7");
  assertEquals(addressBlock("2001:db8:1:2:aaaa::1"), "2001:db8:1:2::/64");
  assertEquals(addressBlock("2001:db8:1:2:ffff:0:0:9"), "2001:db8:1:2::/64");
  assertEquals(addressBlock("2001:db8::1"), "2001:db8:0:0::/64");
  assertEquals(addressBlock("::1"), "0:0:0:0::/64");
  assertEquals(addressBlock("::ffff:198.51.100.1"), "198.51.100.1");
  assertEquals(addressBlock(undefined), "unknown");
});

Deno.test("findUnstorable: deep nesting is refused without recursion; bad keys and values named", () => {
  const deep = JSON.parse("[".repeat(100_000) + "]".repeat(100_000));
  assertMatch(findUnstorable({ a: deep }) ?? "", /nested deeper than 32 levels/);
  let fits: unknown = "ok";
  for (let i = 1; i < MAX_JSON_DEPTH; i++) fits = [fits];
  assertEquals(findUnstorable(fits), undefined);
  assertMatch(findUnstorable({ m: { ["\ud800"]: 1 } }) ?? "", /body\.m \(a key\)/);
  assertMatch(findUnstorable({ m: ["x", "a\0b"] }) ?? "", /body\.m\.1: text must be valid/);
});

function refusal(userId: string): UsageEvent {
  return {
    request_id: crypto.randomUUID(),
    org_id: null,
    user_id: userId,
    session_id: null,
    channel: null,
    model: null,
    prompt_tokens: null,
    cached_prompt_tokens: null,
    completion_tokens: null,
    total_tokens: null,
    latency_ms: 1,
    success: false,
    error_code: "forbidden",
    error_message: "x",
    event_count: 1,
    metadata: {},
  };
}

Deno.test("refusal ledger: one address block gets ipLimit first rows, the rest are counted into one", async () => {
  const written: UsageEvent[] = [];
  let clock = 0;
  const ledger = createRefusalLedger({
    intervalMs: 60_000,
    ipLimit: 3,
    now: () => clock,
    write: (e) => Promise.resolve(void written.push(e)),
  });
  for (let i = 0; i < 10; i++) {
    await ledger.refused(`u${i}:forbidden:`, refusal(`u${i}`), `2001:db8:7:7::${i + 1}`);
  }
  assertEquals(written.length, 3, "first rows while the block has allowance");
  clock = 61_000;
  await ledger.flush();
  assertEquals(written.length, 4);
  assertEquals(written[3]!.event_count, 7, "the other seven in one row");
  assertEquals(ledger.blockedFor("2001:db8:7:7::99"), 0, "authenticated refusals never block");
  await ledger.close();
});

Deno.test("refusal ledger: a blocked block waits for the rest of the interval, an unknown address never", () => {
  let clock = 1_000;
  const ledger = createRefusalLedger({
    intervalMs: 60_000,
    ipLimit: 2,
    now: () => clock,
    write: () => Promise.resolve(),
  });
  for (let i = 0; i < 2; i++) {
    ledger.anonymous("unauthorized", `2001:db8:5:5::${i}`);
    ledger.anonymous("unauthorized", undefined);
    ledger.anonymous("unauthorized", undefined);
  }
  clock = 21_000;
  assertEquals(ledger.blockedFor("2001:db8:5:5:1::1"), 40, "40 s of the 60 s interval left");
  assertEquals(ledger.blockedFor(undefined), 0);
  assertEquals(ledger.blockedFor("2001:db8:5:6::1"), 0, "another /64");
  return ledger.close();
});

Deno.test("request log: failures of the service are errors; the kill switch and refusals are warnings", async () => {
  const { requestLogLine } = await import("../../functions/agent-chat/request-log.ts");
  const settings = { sessionStore: "supabase", transport: "rpc" };
  const facts = { requestId: "r", started: 0 };
  const level = (status: number, code?: ErrorCode) =>
    requestLogLine(settings, facts, status, code ? { error: { code, detail: "d" } } : {}, 1)[0];
  assertEquals(level(502, "openai_error"), "error");
  assertEquals(level(503, "session_store_error"), "error");
  assertEquals(level(503, "assistant_disabled"), "warn");
  assertEquals(level(429, "rate_limit"), "warn");
  assertEquals(level(499, "client_closed"), "info");
  assertEquals(level(200), "info");
});

Deno.test("check-imports: an import circle is found through type imports and re-exports; none in the repository", async () => {
  const base = await Deno.makeTempDir({ prefix: "agent-chat-imports-" });
  try {
    await Deno.mkdir(`${base}/fn/sub`, { recursive: true });
    await Deno.writeTextFile(`${base}/fn/words.ts`, "export type Word = string;\n");
    await Deno.writeTextFile(
      `${base}/fn/a.ts`,
      'import type { Word } from "./words.ts";\nimport type { B } from "./sub/b.ts";\nexport type A = Word | B;\n',
    );
    await Deno.writeTextFile(`${base}/fn/sub/b.ts`, 'export type { A as B } from "../a.ts";\n');
    assertEquals(await importCircles(["fn"], `${base}/`), ["fn/a.ts → fn/sub/b.ts → fn/a.ts"]);
    await Deno.writeTextFile(
      `${base}/fn/sub/b.ts`,
      'import type { Word } from "../words.ts";\nexport type B = Word;\n',
    );
    assertEquals(await importCircles(["fn"], `${base}/`), []);
  } finally {
    await Deno.remove(base, { recursive: true });
  }
  assertEquals(await importCircles(["supabase", "scripts"]), []);
});
