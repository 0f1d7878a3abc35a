/**
 * The hosted services the function reaches, as one process (for the
 * benchmark and the reliability suite, which measure the function apart
 * from them): the OpenAI stand-in (answering at once unless scripted via
 * POST /script), the Auth JWKS signing with the key in
 * AGENT_CHAT_SIGNING_KEY, and, when AGENT_CHAT_DATABASE_URL is set, the
 * PostgREST stand-in at /rest/v1/ accepting AGENT_CHAT_SECRET_KEY as the
 * service role (the rpc transport). GET /requests answers how many model
 * calls the OpenAI stand-in has had, in all and per model. Prints `{"port": n}`.
 */
import { createOpenAIStandIn } from "./openai.ts";
import { createAuthStandIn } from "./auth.ts";
import { createPostgrestStandIn } from "./postgrest.ts";

const env = Deno.env.toObject();
const auth = await createAuthStandIn({ signingKey: JSON.parse(env.AGENT_CHAT_SIGNING_KEY!) });
const postgrest = env.AGENT_CHAT_DATABASE_URL
  ? createPostgrestStandIn({
    databaseUrl: env.AGENT_CHAT_DATABASE_URL,
    jwks: auth.jwks,
    jwtSecret: auth.jwtSecret,
    secretKeys: env.AGENT_CHAT_SECRET_KEY ? [env.AGENT_CHAT_SECRET_KEY] : [],
  })
  : undefined;
const openai = createOpenAIStandIn({ serve: false });
if (env.OPENAI_STAND_IN_MODE === "slow") openai.fallback = { kind: "reply", latencyMs: 200 };
const notFound = () => new Response("not found", { status: 404 });
const server = Deno.serve({
  port: Number(env.PORT ?? 0),
  hostname: "127.0.0.1",
  onListen: ({ port }) => console.log(JSON.stringify({ port })),
}, async (request) => {
  const path = new URL(request.url).pathname;
  if (path.startsWith("/auth/v1/")) return auth.handle(request) ?? notFound();
  if (path.startsWith("/rest/v1/")) return (await postgrest?.handle(request)) ?? notFound();
  if (path === "/script" && request.method === "POST") {
    openai.script(...await request.json());
    return new Response("ok");
  }
  if (path === "/requests" && request.method === "GET") {
    const byModel: Record<string, number> = {};
    for (const r of openai.requests) byModel[r.body.model] = (byModel[r.body.model] ?? 0) + 1;
    return Response.json({ openai: openai.requests.length, by_model: byModel });
  }
  return await openai.handle(request);
});
const stop = async () => {
  await openai.stop(); // a hung request ([[hang]]) would hold the shutdown forever
  await server.shutdown();
  await postgrest?.close();
  Deno.exit(0);
};
Deno.addSignalListener("SIGTERM", stop);
Deno.addSignalListener("SIGINT", stop);
