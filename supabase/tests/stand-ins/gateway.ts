/**
 * A local stand-in for the Supabase API gateway on one port, with the paths
 * hosted Supabase and `supabase start` use:
 *   /auth/v1/.well-known/jwks.json   Auth stand-in
 *   /rest/v1/rpc/<fn>                PostgREST stand-in (real SQL)
 *   /functions/v1/<name>             the functions' handlers (agent-chat, agent-alerts), in process
 * Like the real gateway it appends the caller's address to X-Forwarded-For,
 * so the function sees one trusted hop. API keys: PostgREST maps a secret
 * key to `service_role` and a publishable (anon) key to `anon`; a function
 * deployed with `verify_jwt = false` (agent-chat) gets every request as sent,
 * `apikey` and `Authorization` included, as the hosted platform forwards it:
 * supabase-js sends `apikey: <anon key>` and `Authorization: Bearer <the
 * user's access token>` (no Authorization without a session), and the
 * function decides.
 */
import type { AuthStandIn } from "./auth.ts";
import { createPostgrestStandIn, type PostgrestStandIn } from "./postgrest.ts";

export type FunctionHandler = (
  request: Request,
  info?: Deno.ServeHandlerInfo<Deno.NetAddr>,
) => Promise<Response>;

export interface Gateway {
  url: string;
  port: number;
  functionUrl: string;
  /** `${url}/functions/v1`: each function is served at `${functionsUrl}/<name>`. */
  functionsUrl: string;
  postgrest: PostgrestStandIn;
  /** Serves `handler` at /functions/v1/<name> (default agent-chat). */
  setFunction(handler: FunctionHandler, name?: string): void;
  stop(): Promise<void>;
}

export function startGateway(options: {
  databaseUrl: string;
  auth: AuthStandIn;
  secretKeys?: string[];
  publishableKeys?: string[];
  port?: number;
}): Gateway {
  const postgrest = createPostgrestStandIn({
    databaseUrl: options.databaseUrl,
    jwks: options.auth.jwks,
    jwtSecret: options.auth.jwtSecret,
    secretKeys: options.secretKeys ?? [],
    publishableKeys: options.publishableKeys ?? [],
  });
  const functions = new Map<string, FunctionHandler>();
  const server = Deno.serve(
    { port: options.port ?? 0, hostname: "127.0.0.1", onListen: () => {} },
    async (request, info) => {
      const path = new URL(request.url).pathname;
      if (path.startsWith("/auth/v1/")) {
        return options.auth.handle(request) ??
          Response.json({ message: "not found" }, { status: 404 });
      }
      if (path.startsWith("/rest/v1/")) {
        return await postgrest.handle(request) ??
          Response.json({ message: "not found" }, { status: 404 });
      }
      const fn = functions.get(/^\/functions\/v1\/([a-z0-9-]+)$/.exec(path)?.[1] ?? "");
      if (fn) {
        const headers = new Headers(request.headers);
        const peer = info.remoteAddr.hostname;
        const prior = headers.get("x-forwarded-for");
        headers.set("x-forwarded-for", prior ? `${prior}, ${peer}` : peer);
        const forwarded = new Request(request, { headers });
        return await fn(forwarded, info);
      }
      return Response.json({ message: "no Route matched with those values" }, { status: 404 });
    },
  );
  const url = `http://127.0.0.1:${server.addr.port}`;
  return {
    url,
    port: server.addr.port,
    functionUrl: `${url}/functions/v1/agent-chat`,
    functionsUrl: `${url}/functions/v1`,
    postgrest,
    setFunction: (handler, name = "agent-chat") => {
      functions.set(name, handler);
    },
    stop: async () => {
      await server.shutdown();
      await postgrest.close();
    },
  };
}
