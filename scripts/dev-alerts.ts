/**
 * `npm run dev`'s stand-in for the hosted pg_cron job: POSTs to agent-alerts
 * with the service key every AI_AGENT_ALERT_INTERVAL_SECONDS (default 60),
 * one cycle at a time, and prints a line when a cycle raised, resolved or
 * sent something, or failed.
 */
import { UsageError } from "./cli.ts";

export function alertIntervalSeconds(raw: string | undefined): number {
  if (raw === undefined || raw.trim() === "") return 60;
  const n = Number(raw);
  if (!Number.isInteger(n) || n < 1 || n > 3600) {
    throw new UsageError(
      `AI_AGENT_ALERT_INTERVAL_SECONDS: a whole number of seconds, 1 to 3600 (got ${raw})`,
    );
  }
  return n;
}

export function scheduleAlertCycles(options: {
  url: string;
  key: string;
  intervalSeconds: number;
  log: (line: string) => void;
}): { stop(): Promise<void> } {
  let running: Promise<void> | undefined;
  const cycle = async () => {
    try {
      const response = await fetch(options.url, {
        method: "POST",
        headers: { authorization: `Bearer ${options.key}` },
        signal: AbortSignal.timeout(options.intervalSeconds * 1000 + 120_000),
      });
      const body = await response.json();
      if (!response.ok) {
        return options.log(`alerts cycle: HTTP ${response.status} ${JSON.stringify(body)}`);
      }
      const { check, claimed, sent } = body;
      if (check.raised + check.resolved + claimed > 0) {
        options.log(`alerts cycle: ${JSON.stringify({ check, claimed, sent })}`);
      }
    } catch (error) {
      options.log(`alerts cycle failed: ${error instanceof Error ? error.message : error}`);
    }
  };
  const timer = setInterval(() => {
    running ??= cycle().finally(() => (running = undefined));
  }, options.intervalSeconds * 1000);
  return {
    async stop() {
      clearInterval(timer);
      await running;
    },
  };
}
