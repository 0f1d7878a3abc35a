/**
 * agent-alerts Edge Function entrypoint: read config, build dependencies,
 * serve the handler. pg_cron calls it every minute (docs/operations.md).
 */
import { loadAlertsConfig } from "./config.ts";
import { buildAlertsDependencies } from "./deps.ts";
import { createAlertsHandler } from "./handler.ts";

const config = loadAlertsConfig(Deno.env.toObject());
Deno.serve(createAlertsHandler(buildAlertsDependencies(config)));
