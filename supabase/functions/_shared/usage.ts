/**
 * Usage logging: one insert per request, whatever the outcome. Handed to
 * `EdgeRuntime.waitUntil` when the runtime has it (off the response's
 * critical path), awaited otherwise. A failed insert never fails the
 * user's request; it becomes one structured log line.
 */
import type { TurnDatabase, UsageEvent } from "./database.ts";
import { describe } from "./errors.ts";
import type { Logger } from "./log.ts";

/** Keeps the isolate alive until `promise` settles (EdgeRuntime.waitUntil). */
export type ExtendLifetime = (promise: Promise<unknown>) => void;

export function edgeRuntimeLifetime(): ExtendLifetime | undefined {
  const runtime = (globalThis as { EdgeRuntime?: { waitUntil?: (p: Promise<unknown>) => void } })
    .EdgeRuntime;
  return typeof runtime?.waitUntil === "function" ? (p) => runtime.waitUntil!(p) : undefined;
}

export interface UsageLogger {
  readonly enabled: boolean;
  record(event: UsageEvent): Promise<void>;
}

export function createUsageLogger(options: {
  enabled: boolean;
  db: TurnDatabase;
  log: Logger;
  extendLifetime: ExtendLifetime | undefined;
}): UsageLogger {
  return {
    enabled: options.enabled,
    async record(event) {
      if (!options.enabled) return;
      const insert = options.db.logUsage(event).catch((error) => {
        options.log("error", "usage_log_failed", {
          request_id: event.request_id,
          error_code: event.error_code,
          detail: describe(error),
        });
      });
      if (options.extendLifetime) options.extendLifetime(insert);
      else await insert;
    },
  };
}
