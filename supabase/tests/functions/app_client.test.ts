/**
 * The app developer's path, as README "Calling from an app" documents it:
 * `npm run dev` (scripts/dev.ts, run as a process) prints the project URL
 * and the anon key and keeps them, the service key and the database port
 * across a restart; `deno task token` mints a member's token; then the
 * README's supabase-js code blocks, extracted and type-checked as printed,
 * run against that stack with signed-in users' sessions (npm:@supabase/supabase-js).
 */
import postgres from "postgres";
import { createClient, type SupabaseClient } from "@supabase/supabase-js";
import { assert, assertEquals, assertMatch } from "./assert.ts";
import { freePort } from "../support/tools.ts";

const root = new URL("../../../", import.meta.url).pathname;
const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;

// ------------------------------------------------------------ the dev stack

interface Banner {
  projectUrl: string;
  anonKey: string;
  serviceKey: string;
  postgresUrl: string;
}

interface Dev {
  banner: Banner;
  stop(): Promise<void>;
}

/** `deno task dev` as a user starts it; resolves once its banner is printed (at most 3 minutes). */
async function startDev(env: Record<string, string>): Promise<Dev> {
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", "--allow-all", "--no-check", "--unstable-no-legacy-abort", "scripts/dev.ts"],
    cwd: root,
    env: { NO_COLOR: "1", ...env },
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  // Its log lines (one per request) are kept for a failure's message, not printed.
  let logs = "";
  const drainLogs = child.stderr.pipeThrough(new TextDecoderStream()).pipeTo(
    new WritableStream({ write: (chunk) => void (logs = (logs + chunk).slice(-4000)) }),
  ).catch(() => {});
  const stop = async () => {
    try {
      child.kill("SIGINT");
    } catch { /* gone */ }
    await child.status;
    await drainLogs;
  };
  const reader = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
  const timer = setTimeout(() => stop(), 180_000);
  let text = "";
  try {
    while (!text.includes("Ctrl-C stops everything")) {
      const { value, done } = await reader.read();
      if (done) throw new Error(`npm run dev exited before its banner:\n${text}\n${logs}`);
      text += value;
    }
  } catch (error) {
    await stop();
    throw error;
  } finally {
    clearTimeout(timer);
  }
  // Keep draining stdout so the stack never blocks on a full pipe.
  (async () => {
    try {
      while (!(await reader.read()).done) { /* discard */ }
    } catch { /* closed */ }
  })();
  return { banner: parseBanner(text), stop };
}

function parseBanner(text: string): Banner {
  const field = (label: string) => {
    const m = new RegExp(`^  ${label}\\s+(\\S+)`, "m").exec(text);
    assert(m, `the banner names the ${label}:\n${text}`);
    return m[1]!;
  };
  return {
    projectUrl: field("project URL"),
    anonKey: field("anon key"),
    serviceKey: field("service key"),
    postgresUrl: field("postgres"),
  };
}

async function mintToken(env: Record<string, string>, user: string, org: string) {
  const r = await new Deno.Command(Deno.execPath(), {
    args: ["run", "--allow-all", "--no-check", "scripts/token.ts", "--user", user, "--org", org],
    cwd: root,
    env: { NO_COLOR: "1", ...env },
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).output();
  assertEquals(r.code, 0, new TextDecoder().decode(r.stderr));
  return new TextDecoder().decode(r.stdout).trim();
}

// ------------------------------------------------------------ the README's code

/** The module the README's code blocks make, as this test uses it. */
interface AppSnippets {
  chatClient(projectUrl: string, anonKey: string): SupabaseClient;
  ask(supabase: SupabaseClient, body: ChatBody, idempotencyKey?: string): Promise<ChatAnswer>;
  askWithRetries(
    supabase: SupabaseClient,
    body: ChatBody,
    idempotencyKey?: string,
    attempts?: number,
  ): Promise<ChatAnswer>;
  askStreaming(
    supabase: SupabaseClient,
    body: ChatBody,
    onDelta: (text: string) => void,
  ): Promise<Omit<ChatAnswer, "message">>;
  ChatError: new (...args: never[]) => ChatErrorShape;
}
interface ChatBody {
  org_id: string;
  message: string;
  session_id?: string;
}
interface ChatAnswer {
  session_id: string;
  message: string;
  usage: { prompt_tokens: number; completion_tokens: number; total_tokens: number };
  model: string;
  request_id: string;
}
interface ChatErrorShape extends Error {
  status: number;
  code: string;
  requestId?: string;
  retryAfterSeconds?: number;
}

/** The ts code blocks of README "Calling from an app", as one module in `dir`, type-checked. */
async function readmeModule(dir: string): Promise<AppSnippets> {
  const readme = await Deno.readTextFile(`${root}README.md`);
  const start = readme.indexOf("\n## Calling from an app\n");
  assert(start >= 0, "README has a section `Calling from an app`");
  const section = readme.slice(start, readme.indexOf("\n## ", start + 1));
  const blocks = [...section.matchAll(/```ts\n([\s\S]*?)```/g)].map((m) => m[1]);
  assert(blocks.length >= 4, `the section's ts code blocks: ${blocks.length}`);
  const path = `${dir}/calling-from-an-app.ts`;
  await Deno.writeTextFile(path, blocks.join("\n"));
  const check = await new Deno.Command(Deno.execPath(), {
    args: ["check", "--config", `${root}deno.json`, path],
    cwd: root,
    stdout: "piped",
    stderr: "piped",
  }).output();
  assertEquals(check.code, 0, new TextDecoder().decode(check.stderr));
  return await import(`file://${path}`);
}

/** A supabase-js client holding a signed-in user's session (what signInWith… leaves). */
async function signedIn(banner: Banner, accessToken: string): Promise<SupabaseClient> {
  const supabase = createClient(banner.projectUrl, banner.anonKey, {
    auth: { persistSession: false, autoRefreshToken: false },
  });
  const { error } = await supabase.auth.setSession({
    access_token: accessToken,
    refresh_token: "unused",
  });
  assertEquals(error, null);
  return supabase;
}

async function refusal(app: AppSnippets, call: Promise<unknown>): Promise<ChatErrorShape> {
  try {
    await call;
  } catch (error) {
    assert(error instanceof app.ChatError, `a ChatError: ${error}`);
    return error;
  }
  throw new Error("the call succeeded");
}

// ------------------------------------------------------------ the test

Deno.test("app developer's path: npm run dev twice, then the README's supabase-js code", async (t) => {
  const local = await Deno.makeTempDir({ prefix: "agent-chat-app-" });
  // As .local/ is: PostgreSQL (an unprivileged user when run as root) creates its folder inside.
  await Deno.chmod(local, 0o755);
  const env = {
    AGENT_CHAT_LOCAL_DIR: local,
    AGENT_CHAT_DEV_PORT: String(freePort()),
    OPENAI_API_KEY: "",
    AI_AGENT_RATE_LIMIT_USER_MAX_REQUESTS: "5",
  };
  let dev: Dev | undefined;
  let sql: postgres.Sql | undefined;
  try {
    const first = await startDev(env);
    await first.stop();
    dev = await startDev(env);
    const { banner } = dev;

    await t.step("the banner has what createClient needs, the same across a restart", () => {
      assertEquals(banner, first.banner);
      assertEquals(banner.projectUrl, `http://127.0.0.1:${env.AGENT_CHAT_DEV_PORT}`);
      assertMatch(banner.anonKey, /^sb_publishable_\w+$/);
      assertMatch(banner.serviceKey, /^sb_secret_\w+$/);
    });

    const app = await readmeModule(local);
    const db = postgres(banner.postgresUrl, { max: 2, onnotice: () => {} });
    sql = db;
    const member = async (org = crypto.randomUUID()) => {
      const user = crypto.randomUUID();
      return { org, user, supabase: await signedIn(banner, await mintToken(env, user, org)) };
    };
    const messages = async (session: string) =>
      (await db`select count(*)::int as n from public.agent_session_messages
                where session_id = ${session}`)[0]!.n;

    await t.step("a turn, a follow-up with session_id, a streamed follow-up", async () => {
      const a = await member();
      const first = await app.ask(a.supabase, { org_id: a.org, message: "How do I save?" });
      assertMatch(first.session_id, UUID);
      assert(first.message.length > 0);
      const next = await app.ask(a.supabase, {
        org_id: a.org,
        message: "And withdraw?",
        session_id: first.session_id,
      });
      assertEquals(next.session_id, first.session_id);
      let streamed = "";
      const done = await app.askStreaming(
        a.supabase,
        { org_id: a.org, message: "Thanks", session_id: first.session_id },
        (text) => streamed += text,
      );
      assertEquals(done.session_id, first.session_id);
      assert(done.usage.total_tokens > 0);
      assertEquals(await messages(first.session_id), 6);
      const [last] = await db`select content from public.agent_session_messages
                              where session_id = ${first.session_id} order by id desc limit 1`;
      assertEquals(last!.content, streamed, "the deltas make the stored reply");
    });

    await t.step("an unknown session_id starts that session; another user's is 404", async () => {
      const a = await member();
      const chosen = crypto.randomUUID();
      const answer = await app.ask(a.supabase, {
        org_id: a.org,
        message: "hi",
        session_id: chosen,
      });
      assertEquals(answer.session_id, chosen);
      const b = await member(a.org);
      const e = await refusal(
        app,
        app.ask(b.supabase, { org_id: a.org, message: "hi", session_id: chosen }),
      );
      assertEquals([e.status, e.code], [404, "session_not_found"]);
      assertMatch(e.requestId ?? "", UUID);
    });

    await t.step("errors: code and request_id from the body; no session is 401", async () => {
      const a = await member();
      const e = await refusal(
        app,
        app.ask(a.supabase, { org_id: crypto.randomUUID(), message: "hi" }),
      );
      assertEquals([e.status, e.code], [403, "forbidden"]);
      assertMatch(e.requestId ?? "", UUID);
      const anonymous = app.chatClient(banner.projectUrl, banner.anonKey);
      try {
        const e401 = await refusal(app, app.ask(anonymous, { org_id: a.org, message: "hi" }));
        assertEquals([e401.status, e401.code], [401, "unauthorized"]);
      } finally {
        await anonymous.auth.stopAutoRefresh();
      }
    });

    await t.step("rate limit: 429 with Retry-After; retries stop at their budget", async () => {
      const a = await member();
      for (let i = 0; i < 5; i++) await app.ask(a.supabase, { org_id: a.org, message: `m${i}` });
      const e = await refusal(
        app,
        app.askWithRetries(a.supabase, { org_id: a.org, message: "x" }, undefined, 1),
      );
      assertEquals([e.status, e.code], [429, "rate_limit"]);
      assert((e.retryAfterSeconds ?? 0) >= 1, `Retry-After: ${e.retryAfterSeconds}`);
    });

    await t.step("Idempotency-Key: the retry gets the first answer, one turn saved", async () => {
      const a = await member();
      const key = crypto.randomUUID();
      const body = { org_id: a.org, message: "Record my contribution" };
      const first = await app.askWithRetries(a.supabase, body, key);
      const again = await app.ask(a.supabase, body, key);
      assertEquals(again, first);
      assertEquals(await messages(first.session_id), 2);
      // One model call; the replay is counted too, without tokens (metadata.replayed).
      const rows = await db`select count(*)::int as n from public.agent_usage_events
                            where user_id = ${a.user} and success and total_tokens > 0`;
      assertEquals(rows[0]!.n, 1);
    });
  } finally {
    await sql?.end({ timeout: 1 });
    await dev?.stop();
    await Deno.remove(local, { recursive: true }).catch(() => {});
  }
});
