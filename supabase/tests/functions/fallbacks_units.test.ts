/**
 * The circuit breaker on a clock the test moves, the fallback chain over
 * in-memory upstreams, and AI_AGENT_MODEL_FALLBACKS read at start (every
 * problem names its entry).
 */
import { assert, assertEquals, assertMatch } from "./assert.ts";
import { createBreaker } from "../../functions/agent-chat/breaker.ts";
import { createFallbackModel, UpstreamUnavailable } from "../../functions/agent-chat/fallbacks.ts";
import { ConfigError, loadConfig } from "../../functions/agent-chat/config.ts";
import { type ModelClient, ModelError } from "../../functions/agent-chat/model.ts";
import { answerOf } from "../support/fakes.ts";

/** The error `fn` throws, checked to be a `type`. */
async function thrown<T>(fn: () => unknown, type: new (...a: never[]) => T): Promise<T> {
  try {
    await fn();
  } catch (error) {
    assert(error instanceof type, `expected ${type.name}, got ${error}`);
    return error;
  }
  throw new Error(`expected ${type.name}, nothing thrown`);
}

function clock() {
  let t = 1_000;
  return { now: () => t, advance: (ms: number) => void (t += ms) };
}

Deno.test("breaker: opens after N consecutive failures, skips, then lets one probe through", () => {
  const c = clock();
  const changes: string[] = [];
  const b = createBreaker("m@host", {
    failures: 3,
    openMs: 30_000,
    now: c.now,
    onChange: (s) => changes.push(s),
  });
  assertEquals(b.failure(), undefined);
  b.success(); // a success in between resets the count
  assertEquals([b.failure(), b.failure(), b.failure()], [undefined, undefined, "opened"]);
  assertEquals(b.admit(), { allowed: false, retryAfterMs: 30_000 });
  c.advance(29_999);
  assertEquals(b.admit().allowed, false);
  c.advance(1);
  const probe = b.admit();
  assertEquals(probe, { allowed: true, probe: true });
  assertEquals(b.admit().allowed, false, "one probe at a time");
  assertEquals(b.failure(), "opened", "a failed probe opens it again");
  c.advance(30_000);
  const second = b.admit();
  b.release(second); // the probe's client left: no verdict, the slot is free
  assertEquals(b.admit(), { allowed: true, probe: true });
  assertEquals(b.success(), "closed");
  assertEquals(b.admit(), { allowed: true, probe: false });
  assertEquals(changes, ["open", "half_open", "open", "half_open", "closed"]);
});

function upstream(name: string, client: ModelClient, c = clock()) {
  return {
    model: name,
    client,
    breaker: createBreaker(`${name}@h`, { failures: 1, openMs: 10_000, now: c.now }),
  };
}
const failing = (status: number): ModelClient => ({
  complete: () => Promise.reject(new ModelError(`openai ${status}`, status)),
  // deno-lint-ignore require-yield
  async *stream() {
    throw new ModelError(`openai ${status}`, status);
  },
});
const answering = (text: string): ModelClient => ({
  complete: () => Promise.resolve(answerOf(text)),
  async *stream() {
    yield { type: "delta", text };
    yield { type: "done", answer: answerOf(text) };
  },
});

Deno.test("chain: open breakers are skipped; all open is UpstreamUnavailable with Retry-After", async () => {
  const c = clock();
  const a = upstream("a", failing(500), c);
  const b = upstream("b", failing(502), c);
  const chain = createFallbackModel([a, b]);
  const signal = new AbortController().signal;
  const first = await thrown(() => chain.complete([], signal), ModelError);
  assertEquals(first.status, 502);
  assertEquals(first.attempts!.map((x) => x.breaker), ["opened", "opened"]);
  c.advance(4_000);
  const none = await thrown(() => chain.complete([], signal), UpstreamUnavailable);
  assertEquals(none.retryAfterSeconds, 6);
  assertEquals(none.attempts!.map((x) => x.outcome), [
    "skipped:breaker_open",
    "skipped:breaker_open",
  ]);
});

Deno.test("chain: a client that left stops the chain and frees a probe", async () => {
  const c = clock();
  const aborted = new AbortController();
  const a = upstream("a", {
    complete: () => {
      aborted.abort();
      return Promise.reject(new ModelError("aborted"));
    },
    stream: answering("x").stream,
  }, c);
  const b = upstream("b", answering("from b"), c);
  a.breaker.failure();
  c.advance(10_000);
  const chain = createFallbackModel([a, b]);
  await thrown(() => chain.complete([], aborted.signal), ModelError);
  assertEquals(a.breaker.admit(), { allowed: true, probe: true }, "the probe slot is free again");
});

Deno.test("chain: a stream commits to the upstream whose first event arrived", async () => {
  const chain = createFallbackModel([upstream("a", failing(503)), upstream("b", answering("hi"))]);
  const events = [];
  for await (const e of chain.stream([], new AbortController().signal)) events.push(e);
  assertEquals(events[0], { type: "delta", text: "hi" });
  const done = events[1]!;
  assert(done.type === "done");
  assertEquals(done.answer.attempts!.map((x) => x.outcome), ["failed:503", "answered"]);
});

const base = {
  SUPABASE_URL: "http://127.0.0.1:54321",
  SUPABASE_SERVICE_ROLE_KEY: "service",
  SUPABASE_JWT_SECRET: "secret",
  OPENAI_API_KEY: "sk-primary",
};

Deno.test("config: fallbacks resolved with the primary's URL and key by default", () => {
  const config = loadConfig({
    ...base,
    OPENAI_BASE_URL: "https://example.openai.azure.com/openai/v1",
    AZURE_KEY: "az",
    AI_AGENT_MODEL_FALLBACKS: JSON.stringify([
      { model: "gpt-4.1-nano" },
      { model: "gpt-4o-mini", base_url: "https://other.example/v1", api_key_env: "AZURE_KEY" },
    ]),
  });
  assertEquals(config.fallbacks, [
    {
      model: "gpt-4.1-nano",
      baseURL: "https://example.openai.azure.com/openai/v1",
      apiKey: "sk-primary",
    },
    { model: "gpt-4o-mini", baseURL: "https://other.example/v1", apiKey: "az" },
  ]);
  assertEquals(config.breaker, { failures: 5, openSeconds: 30 });
});

Deno.test("config: every fallback problem is reported at once, naming its entry", async () => {
  const error = await thrown(() =>
    loadConfig({
      ...base,
      AI_AGENT_MODEL_FALLBACKS: JSON.stringify([
        { model: "" },
        { model: "b", base_url: "http://api.example.com/v1" },
        { model: "c", api_key_env: "UNSET_KEY" },
        { model: "d", extra: 1 },
        { model: "gpt-4.1-mini" },
        { model: "e", api_key_env: "SUPABASE_SERVICE_ROLE_KEY" },
      ]),
    }), ConfigError);
  const text = error.problems.join("\n");
  assertMatch(text, /AI_AGENT_MODEL_FALLBACKS\[0\]\.model/);
  assertMatch(text, /AI_AGENT_MODEL_FALLBACKS\[1\]\.base_url: must be https:\/\//);
  assertMatch(text, /AI_AGENT_MODEL_FALLBACKS\[2\]\.api_key_env: UNSET_KEY is unset/);
  assertMatch(text, /AI_AGENT_MODEL_FALLBACKS\[3\]: .*extra/);
  assertMatch(
    text,
    /AI_AGENT_MODEL_FALLBACKS\[4\]: repeats the upstream gpt-4\.1-mini@api\.openai\.com/,
  );
  assertMatch(
    text,
    /AI_AGENT_MODEL_FALLBACKS\[5\]\.api_key_env: SUPABASE_SERVICE_ROLE_KEY is not a model key/,
  );
  for (const raw of ["not json", '{"model":"x"}', JSON.stringify(Array(9).fill({ model: "m" }))]) {
    const e = await thrown(
      () => loadConfig({ ...base, AI_AGENT_MODEL_FALLBACKS: raw }),
      ConfigError,
    );
    assertMatch(e.problems.join("\n"), /^AI_AGENT_MODEL_FALLBACKS: /);
  }
  const b = await thrown(
    () =>
      loadConfig({
        ...base,
        AI_AGENT_BREAKER_FAILURES: "0",
        OPENAI_BASE_URL: "https://u:p@x.example/v1",
      }),
    ConfigError,
  );
  assertMatch(b.problems.join("\n"), /AI_AGENT_BREAKER_FAILURES/);
  const c = await thrown(
    () => loadConfig({ ...base, OPENAI_BASE_URL: "https://u:p@x.example/v1" }),
    ConfigError,
  );
  assertMatch(c.problems.join("\n"), /OPENAI_BASE_URL: must not carry credentials/);
  // A turn's model calls must fit in its reservation: 4 upstreams of 150 s do not.
  const slow = await thrown(() =>
    loadConfig({
      ...base,
      AI_AGENT_OPENAI_TIMEOUT_MS: "150000",
      AI_AGENT_OPENAI_MAX_RETRIES: "0",
      AI_AGENT_MODEL_FALLBACKS: JSON.stringify([{ model: "a" }, { model: "b" }, { model: "c" }]),
    }), ConfigError);
  assertMatch(slow.problems.join("\n"), /a turn's model calls could take 600 s, over the 540 s/);
  loadConfig({
    ...base,
    AI_AGENT_OPENAI_TIMEOUT_MS: "100000",
    AI_AGENT_OPENAI_MAX_RETRIES: "0",
    AI_AGENT_MODEL_FALLBACKS: JSON.stringify([{ model: "a" }, { model: "b" }, { model: "c" }]),
  });
});
