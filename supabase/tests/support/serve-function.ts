/**
 * Runs agent-chat as its own process for the benchmarks and the reliability
 * suite, exactly as index.ts wires it, plus what the hosted runtime provides:
 * `EdgeRuntime.waitUntil` (usage inserts leave the critical path). Prints one
 * line `{"port": n}` when it listens. Configuration comes from the environment;
 * AGENT_CHAT_LOG_LEVEL=error prints only error lines, info every line (default: warn and error).
 */
import { loadConfig } from "../../functions/agent-chat/config.ts";
import { buildDependencies } from "../../functions/agent-chat/deps.ts";
import { createAgentChatHandler } from "../../functions/agent-chat/handler.ts";
import { onShutdown } from "../../functions/agent-chat/shutdown.ts";
import type { Logger } from "../../functions/_shared/log.ts";

const pending = new Set<Promise<unknown>>();
(globalThis as Record<string, unknown>).EdgeRuntime = {
  waitUntil(promise: Promise<unknown>) {
    pending.add(promise);
    promise.finally(() => pending.delete(promise));
  },
};

const config = loadConfig(Deno.env.toObject());
const level = Deno.env.get("AGENT_CHAT_LOG_LEVEL");
const printed = level === "error"
  ? ["error"]
  : level === "info"
  ? ["info", "warn", "error"]
  : ["warn", "error"];
const log: Logger = (level, event, fields) => {
  if (printed.includes(level)) console.error(JSON.stringify({ level, event, ...fields }));
};
const deps = buildDependencies(config, { log });
const agentChat = createAgentChatHandler(deps);
// Benchmarks only: GET /__heap answers the V8 heap in use after a full GC
// (the process runs with --expose-gc), to tell a leak from heap growth.
const gc = (globalThis as { gc?: () => void }).gc;
const handler = (request: Request, info: Deno.ServeHandlerInfo<Deno.NetAddr>) => {
  if (gc && request.method === "GET" && new URL(request.url).pathname === "/__heap") {
    gc();
    return Response.json(Deno.memoryUsage());
  }
  return agentChat(request, info);
};
const server = Deno.serve({
  port: Number(Deno.env.get("PORT") ?? 0),
  hostname: "127.0.0.1",
  onListen: ({ port }) => console.log(JSON.stringify({ port })),
}, handler);
// As index.ts: SIGTERM stops taking requests, lets turns finish, writes what is pending.
onShutdown({
  server,
  close: async () => {
    await Promise.allSettled([...pending]);
    await deps.close();
  },
  graceMs: config.shutdownGraceMs,
  log,
});
