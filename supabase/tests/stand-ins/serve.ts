/**
 * The hosted services the function reaches, as one process for benchmarks:
 * the OpenAI stand-in (answering at once unless scripted) and the Auth JWKS,
 * signing with the key in AGENT_CHAT_SIGNING_KEY. Prints `{"port": n}`.
 */
import { createOpenAIStandIn } from "./openai.ts";
import { createAuthStandIn } from "./auth.ts";

const auth = await createAuthStandIn({
  signingKey: JSON.parse(Deno.env.get("AGENT_CHAT_SIGNING_KEY")!),
});
const openai = createOpenAIStandIn({ serve: false });
const mode = Deno.env.get("OPENAI_STAND_IN_MODE");
if (mode === "slow") openai.fallback = { kind: "reply", latencyMs: 200 };
Deno.serve({
  port: Number(Deno.env.get("PORT") ?? 0),
  hostname: "127.0.0.1",
  onListen: ({ port }) => console.log(JSON.stringify({ port })),
}, async (request) => {
  const path = new URL(request.url).pathname;
  if (path.startsWith("/auth/v1/")) {
    return auth.handle(request) ?? new Response("not found", { status: 404 });
  }
  if (path === "/script" && request.method === "POST") {
    openai.script(...await request.json());
    return new Response("ok");
  }
  return await openai.handle(request);
});
