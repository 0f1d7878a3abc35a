/**
 * The throwaway services a test run owns: PostgreSQL (migrated) and Redis.
 * Cleans up on normal exit, on failure and on SIGINT/SIGTERM.
 */
import { type PostgresServer, startPostgres } from "./postgres.ts";
import { type RedisServer, startRedis } from "./redis.ts";
import { migrate } from "./migrate.ts";

export interface TestStack {
  postgres: PostgresServer;
  redis: RedisServer;
  stop(): Promise<void>;
}

export async function startTestStack(
  options: { fast?: boolean; log?: (line: string) => void } = {},
): Promise<TestStack> {
  const cleanups: Array<() => Promise<void>> = [];
  // One stop, however many callers (the signal handler and the normal exit
  // path may both ask): each waits for the same cleanup to finish.
  let stopping: Promise<void> | undefined;
  const stop = () =>
    stopping ??= (async () => {
      for (const fn of cleanups.reverse()) await fn().catch(() => {});
    })();
  const onSignal = () => {
    stop().finally(() => Deno.exit(130));
  };
  Deno.addSignalListener("SIGINT", onSignal);
  Deno.addSignalListener("SIGTERM", onSignal);
  cleanups.push(() => {
    Deno.removeSignalListener("SIGINT", onSignal);
    Deno.removeSignalListener("SIGTERM", onSignal);
    return Promise.resolve();
  });
  try {
    const postgres = await startPostgres({ fast: options.fast ?? true });
    cleanups.push(() => postgres.stop());
    await migrate(postgres.url, { pgCron: postgres.hasPgCron, log: options.log });
    const redis = await startRedis();
    cleanups.push(() => redis.stop());
    return { postgres, redis, stop };
  } catch (error) {
    await stop();
    throw error;
  }
}
