/**
 * agent-chat Edge Function entrypoint: read config, build dependencies,
 * serve the handler (./handler.ts lists the request's steps).
 */
import { loadConfig } from "./config.ts";
import { buildDependencies } from "./deps.ts";
import { createAgentChatHandler } from "./handler.ts";

const config = loadConfig(Deno.env.toObject());
const handler = createAgentChatHandler(buildDependencies(config));

Deno.serve(handler);
