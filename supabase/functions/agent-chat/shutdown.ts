/**
 * Owns the isolate's clean stop. On SIGTERM/SIGINT (a process: `npm run dev`,
 * `supabase functions serve`, the tests' function process) or the edge
 * runtime's `beforeunload` (an isolate recycled by the platform) it stops
 * taking new requests (`server.shutdown()` closes the listener), lets the
 * turns under way finish within `graceMs`, then closes the dependencies,
 * which writes the refusal ledger's pending counts and every usage insert
 * still in flight. Nothing counted in memory is lost on an ordinary stop;
 * a killed process (SIGKILL, out of memory) still loses the current
 * interval's counts.
 */
import type { Logger } from "../_shared/log.ts";

export interface Stoppable {
  /** Stops accepting connections; resolves when the responses under way have ended. */
  shutdown(): Promise<void>;
}

export interface ShutdownOptions {
  server: Stoppable;
  /** Writes what is pending and closes connections (buildDependencies' close). */
  close(): Promise<void>;
  graceMs: number;
  log: Logger;
  /** Exits a process after a signal; the edge runtime ends the isolate itself. */
  exit?: (code: number) => void;
}

/** Stops once, however many signals arrive; returns the stop for tests and callers. */
export function stopCleanly(options: ShutdownOptions): (reason: string) => Promise<void> {
  let stopping: Promise<void> | undefined;
  return (reason) =>
    stopping ??= (async () => {
      const started = performance.now();
      options.log("info", "shutdown", { reason, grace_ms: options.graceMs });
      let timer: ReturnType<typeof setTimeout> | undefined;
      const grace = new Promise<"grace">((resolve) => {
        timer = setTimeout(() => resolve("grace"), options.graceMs);
      });
      const drained = await Promise.race([options.server.shutdown().then(() => "drained"), grace]);
      clearTimeout(timer);
      if (drained === "grace") options.log("warn", "shutdown_grace_exceeded", { reason });
      await options.close().catch((error) => {
        options.log("error", "shutdown_close_failed", { detail: String(error) });
      });
      options.log("info", "shutdown_done", {
        reason,
        ms: Math.round(performance.now() - started),
      });
    })();
}

/** Wires the stop to SIGTERM, SIGINT and `beforeunload`. */
export function onShutdown(options: ShutdownOptions): (reason: string) => Promise<void> {
  const stop = stopCleanly(options);
  const exit = options.exit ?? ((code: number) => Deno.exit(code));
  for (const signal of ["SIGTERM", "SIGINT"] as const) {
    try {
      Deno.addSignalListener(signal, () => void stop(signal).finally(() => exit(0)));
    } catch {
      // The edge runtime has no signals: beforeunload is its notice.
    }
  }
  globalThis.addEventListener("beforeunload", () => void stop("beforeunload"));
  return stop;
}
