/**
 * agent-chat Edge Function entrypoint: read config, build dependencies,
 * serve the handler. Everything else lives in ../_shared/.
 */
import { loadConfig } from "../_shared/config.ts";
import { buildDependencies } from "../_shared/deps.ts";
import { createAgentChatHandler } from "../_shared/handler.ts";

const config = loadConfig(Deno.env.toObject());
const handler = createAgentChatHandler(buildDependencies(config));

Deno.serve(handler);
