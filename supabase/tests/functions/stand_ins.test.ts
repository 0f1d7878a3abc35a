/** The stand-ins answer as the services they replace do (for the parts each header names). */
import OpenAI from "openai";
import { Redis as UpstashRedis } from "@upstash/redis";
import { createClient } from "@supabase/supabase-js";
import postgres from "postgres";
import { assert, assertEquals, assertMatch } from "./assert.ts";
import { createOpenAIStandIn } from "../stand-ins/openai.ts";
import { createUpstashStandIn } from "../stand-ins/upstash.ts";
import { createAuthStandIn } from "../stand-ins/auth.ts";
import { startGateway } from "../stand-ins/gateway.ts";
import { testUrls } from "../support/function-harness.ts";

Deno.test("openai stand-in: JSON, SSE with a usage chunk, errors, malformed, cut, hang; records requests", async () => {
  const s = createOpenAIStandIn();
  const client = new OpenAI({ apiKey: "sk-test", baseURL: s.baseURL, maxRetries: 0, timeout: 500 });
  try {
    const res = await client.chat.completions.create({
      model: "gpt-4.1-mini",
      messages: [{ role: "user", content: "ping" }],
    });
    assertEquals(res.choices[0]!.message.content, "You said: ping");
    assertEquals(res.usage!.total_tokens, res.usage!.prompt_tokens + res.usage!.completion_tokens);
    assertEquals(s.requests[0]!.authorization, "Bearer sk-test");

    s.script({ kind: "reply", text: "streamed words here" });
    const stream = await client.chat.completions.create({
      model: "gpt-4.1-mini",
      messages: [{ role: "user", content: "x" }],
      stream: true,
      stream_options: { include_usage: true },
    });
    let text = "";
    let usageChunks = 0;
    let finish = "";
    for await (const chunk of stream) {
      text += chunk.choices[0]?.delta?.content ?? "";
      if (chunk.choices[0]?.finish_reason) finish = chunk.choices[0].finish_reason;
      if (chunk.usage) {
        usageChunks++;
        assertEquals(chunk.choices.length, 0);
      }
    }
    assertEquals(text, "streamed words here");
    assertEquals(finish, "stop");
    assertEquals(usageChunks, 1);

    for (const status of [429, 500, 503] as const) {
      s.script({ kind: "error", status });
      try {
        await client.chat.completions.create({
          model: "m",
          messages: [{ role: "user", content: "x" }],
        });
        assert(false, "should fail");
      } catch (error) {
        assert(error instanceof OpenAI.APIError);
        assertEquals(error.status, status);
      }
    }
    s.script({ kind: "malformed" });
    const raw = await fetch(`${s.baseURL}/chat/completions`, {
      method: "POST",
      headers: { authorization: "Bearer x" },
      body: JSON.stringify({ model: "m", messages: [] }),
    });
    await raw.text().then((t) => assert(t.startsWith('{"id": "chatcmpl-broken"')));

    s.script({ kind: "cut", afterChunks: 1 });
    let cutFailed = false;
    try {
      const cut = await client.chat.completions.create({
        model: "m",
        messages: [{ role: "user", content: "a long one" }],
        stream: true,
      });
      for await (const _ of cut) { /* drain */ }
    } catch {
      cutFailed = true;
    }
    assert(cutFailed, "a cut stream fails the reader");

    s.script({ kind: "hang" });
    const started = performance.now();
    let hangFailed = false;
    try {
      await client.chat.completions.create({
        model: "m",
        messages: [{ role: "user", content: "x" }],
      });
    } catch (error) {
      hangFailed = error instanceof OpenAI.APIConnectionTimeoutError;
    }
    assert(hangFailed && performance.now() - started < 3000, "a hang times out on the client side");
    const unauthorized = await fetch(`${s.baseURL}/chat/completions`, {
      method: "POST",
      body: "{}",
    });
    assertEquals(unauthorized.status, 401);
    assertMatch((await unauthorized.json()).error.message, /API key/);
  } finally {
    await s.stop();
  }
});

Deno.test("upstash stand-in: single commands, pipeline, multi-exec, bearer check, base64 encoding", async () => {
  const { redisUrl } = testUrls();
  const s = createUpstashStandIn({ redisUrl });
  try {
    const redis = new UpstashRedis({ url: s.url, token: s.token, enableTelemetry: false });
    const key = `standin:${crypto.randomUUID()}`;
    assertEquals(await redis.set(key, "héllo"), "OK");
    assertEquals(await redis.get(key), "héllo");
    const p = redis.pipeline();
    p.incr(`${key}:n`);
    p.incr(`${key}:n`);
    assertEquals(await p.exec(), [1, 2]);
    const tx = redis.multi();
    tx.rpush(`${key}:l`, "a", "b");
    tx.lrange(`${key}:l`, 0, -1);
    assertEquals(await tx.exec(), [2, ["a", "b"]]);
    const bad = await fetch(s.url, {
      method: "POST",
      body: '["GET","x"]',
      headers: { authorization: "Bearer wrong" },
    });
    assertEquals(bad.status, 401);
    assertEquals(await bad.json(), { error: "Unauthorized" });
    const err = await fetch(s.url, {
      method: "POST",
      body: '["NOSUCHCOMMAND"]',
      headers: { authorization: `Bearer ${s.token}` },
    });
    assertEquals(err.status, 400);
    assertMatch((await err.json()).error, /unknown command/i);
    const pipeline = await fetch(`${s.url}/pipeline`, {
      method: "POST",
      body: JSON.stringify([["SET", `${key}:p`, "1"], ["NOSUCH"]]),
      headers: { authorization: `Bearer ${s.token}` },
    });
    const results = await pipeline.json();
    assertEquals(results[0], { result: "OK" });
    assert(typeof results[1].error === "string");
  } finally {
    await s.stop();
  }
});

Deno.test("auth + postgrest stand-ins: JWKS, apikey and JWT checks, roles, named arguments, PostgREST errors", async () => {
  const { databaseUrl } = testUrls();
  const auth = await createAuthStandIn();
  const secret = "sb_secret_standin_test";
  const publishable = "sb_publishable_standin_test";
  const gw = startGateway({
    databaseUrl,
    auth,
    secretKeys: [secret],
    publishableKeys: [publishable],
  });
  const sql = postgres(databaseUrl, { max: 1, onnotice: () => {} });
  try {
    const jwks = await (await fetch(`${gw.url}/auth/v1/.well-known/jwks.json`)).json();
    assertEquals(jwks.keys[0].kty, "EC");
    assertEquals(jwks.keys[0].alg, "ES256");
    assert(!("d" in jwks.keys[0]), "no private part in the JWKS");

    const rpc = (fn: string, body: unknown, headers: Record<string, string>) =>
      fetch(`${gw.url}/rest/v1/rpc/${fn}`, {
        method: "POST",
        headers: { "content-type": "application/json", ...headers },
        body: JSON.stringify(body),
      });

    const noKey = await rpc("agent_log_usage", {}, {});
    assertEquals(noKey.status, 401);
    await noKey.body?.cancel();

    const userToken = await auth.userToken(crypto.randomUUID());
    const denied = await rpc("agent_log_usage", { p_event: { success: true } }, {
      apikey: userToken,
      authorization: `Bearer ${userToken}`,
    });
    assertEquals(denied.status, 403);
    const deniedBody = await denied.json();
    assertEquals(deniedBody.code, "42501");
    assertEquals(Object.keys(deniedBody).sort(), ["code", "details", "hint", "message"]);

    const forged = await rpc("agent_log_usage", {}, {
      apikey: secret,
      authorization: `Bearer ${await auth.foreignToken("x")}`,
    });
    assertEquals(forged.status, 401);
    assertEquals((await forged.json()).code, "PGRST301");

    // The publishable (anon) key alone is the anon role: a service-only function is 401 for anon.
    const anon = await rpc("agent_log_usage", { p_event: { success: true } }, {
      apikey: publishable,
    });
    assertEquals(anon.status, 401);
    assertEquals((await anon.json()).code, "42501");
    // GoTrue's GET /user: a valid access token names its user; anything else is 401 bad_jwt.
    const sub = crypto.randomUUID();
    const me = await fetch(`${gw.url}/auth/v1/user`, {
      headers: { apikey: publishable, authorization: `Bearer ${await auth.userToken(sub)}` },
    });
    assertEquals([me.status, (await me.json()).id], [200, sub]);
    const stranger = await fetch(`${gw.url}/auth/v1/user`, {
      headers: { apikey: publishable, authorization: `Bearer ${await auth.foreignToken(sub)}` },
    });
    assertEquals([stranger.status, (await stranger.json()).error_code], [401, "bad_jwt"]);

    const missing = await rpc("no_such_function", {}, { apikey: secret });
    assertEquals(missing.status, 404);
    assertEquals((await missing.json()).code, "PGRST202");

    // Service role through supabase-js: named arguments, a JSON result, request.jwt.claims set.
    const requestId = `standin-${crypto.randomUUID()}`;
    const client = createClient(gw.url, secret, { auth: { persistSession: false } });
    const { error } = await client.rpc("agent_log_usage", {
      p_event: { request_id: requestId, success: true, latency_ms: 5 },
    });
    assertEquals(error, null);
    const rows =
      await sql`select latency_ms from public.agent_usage_events where request_id = ${requestId}`;
    assertEquals(rows[0]!.latency_ms, 5);

    const bad = await client.rpc("agent_begin_turn", {
      p_org_id: "not-a-uuid",
      p_user_id: crypto.randomUUID(),
    });
    assertEquals(bad.error?.code, "22P02");
    assertEquals(bad.status, 400);
    const serviceJwt = await auth.serviceToken();
    const viaJwt = await rpc("agent_log_usage", { p_event: { success: false } }, {
      apikey: serviceJwt,
      authorization: `Bearer ${serviceJwt}`,
    });
    assertEquals(viaJwt.status, 200);
    await viaJwt.body?.cancel();
  } finally {
    await sql.end();
    await gw.stop();
  }
});
