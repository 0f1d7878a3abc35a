/**
 * Stand-in for the Upstash Redis REST API in front of a real redis-server:
 *   POST /            body: a JSON command array, e.g. ["SET","k","v"]
 *   POST /pipeline    body: an array of command arrays; answers an array
 *   POST /multi-exec  the same, run atomically in MULTI/EXEC
 * `Authorization: Bearer <token>` is required (401 `{error}` otherwise).
 * Each result is `{result}` or `{error}` (HTTP 400 for a single failed
 * command). With `Upstash-Encoding: base64` (what @upstash/redis sends by
 * default) string results are base64-encoded, recursively in arrays.
 * Not covered: GET-path commands, pub/sub, `Upstash-Sync-Token`, read-your-writes.
 */
import { Redis } from "ioredis";

export interface UpstashStandIn {
  url: string;
  token: string;
  requests: number;
  stop(): Promise<void>;
}

const b64 = (s: string) => {
  const bytes = new TextEncoder().encode(s);
  let bin = "";
  for (const b of bytes) bin += String.fromCharCode(b);
  return btoa(bin);
};

function encode(value: unknown, base64: boolean): unknown {
  if (!base64) return value;
  if (typeof value === "string") return b64(value);
  if (Array.isArray(value)) return value.map((v) => encode(v, true));
  return value;
}

export function createUpstashStandIn(
  options: { redisUrl: string; token?: string; port?: number },
): UpstashStandIn {
  const token = options.token ?? `upstash-${crypto.randomUUID()}`;
  const redis = new Redis(options.redisUrl, {
    maxRetriesPerRequest: 1,
    enableOfflineQueue: true,
    lazyConnect: false,
  });
  redis.on("error", () => {});
  const state: UpstashStandIn = { url: "", token, requests: 0, stop: () => Promise.resolve() };

  const run = async (command: unknown[]): Promise<{ result?: unknown; error?: string }> => {
    try {
      const [name, ...args] = command.map((c) => String(c));
      const result = await redis.call(name!, ...args);
      return { result };
    } catch (error) {
      return { error: (error as Error).message };
    }
  };

  async function handle(request: Request): Promise<Response> {
    state.requests++;
    if (request.headers.get("authorization") !== `Bearer ${token}`) {
      return Response.json({ error: "Unauthorized" }, { status: 401 });
    }
    if (request.method !== "POST") {
      return Response.json({ error: "Method not allowed" }, { status: 405 });
    }
    const base64 = request.headers.get("upstash-encoding")?.toLowerCase() === "base64";
    let body: unknown;
    try {
      body = await request.json();
    } catch {
      return Response.json({ error: "ERR failed to parse command" }, { status: 400 });
    }
    const path = new URL(request.url).pathname;
    const wrap = (r: { result?: unknown; error?: string }) =>
      r.error !== undefined ? { error: r.error } : { result: encode(r.result ?? null, base64) };
    if (path === "/") {
      if (!Array.isArray(body) || body.length === 0) {
        return Response.json({ error: "ERR command must be a non-empty array" }, { status: 400 });
      }
      const r = await run(body);
      return Response.json(wrap(r), { status: r.error !== undefined ? 400 : 200 });
    }
    if (path === "/pipeline" || path === "/multi-exec") {
      if (!Array.isArray(body) || !body.every(Array.isArray)) {
        return Response.json({ error: "ERR body must be an array of commands" }, { status: 400 });
      }
      if (path === "/pipeline") {
        const out = [];
        for (const command of body as unknown[][]) out.push(wrap(await run(command)));
        return Response.json(out);
      }
      try {
        const multi = redis.multi(
          (body as unknown[][]).map((c) => c.map(String) as [string, ...string[]]),
        );
        const results = (await multi.exec()) ?? [];
        return Response.json(
          results.map(([err, res]) =>
            err ? { error: err.message } : { result: encode(res, base64) }
          ),
        );
      } catch (error) {
        return Response.json({ error: (error as Error).message }, { status: 400 });
      }
    }
    return Response.json({ error: "Not found" }, { status: 404 });
  }

  const server = Deno.serve(
    { port: options.port ?? 0, hostname: "127.0.0.1", onListen: () => {} },
    handle,
  );
  state.url = `http://127.0.0.1:${server.addr.port}`;
  state.stop = async () => {
    await server.shutdown();
    redis.disconnect();
  };
  return state;
}
