/**
 * agent-chat Edge Function entrypoint: read config, build dependencies,
 * serve the handler (./handler.ts lists the request's steps), and stop
 * cleanly (./shutdown.ts).
 */
import { consoleLogger } from "../_shared/log.ts";
import { loadConfig } from "./config.ts";
import { buildDependencies } from "./deps.ts";
import { createAgentChatHandler } from "./handler.ts";
import { onShutdown } from "./shutdown.ts";

const config = loadConfig(Deno.env.toObject());
const deps = buildDependencies(config);
const server = Deno.serve(createAgentChatHandler(deps));
onShutdown({ server, close: deps.close, graceMs: config.shutdownGraceMs, log: consoleLogger });
