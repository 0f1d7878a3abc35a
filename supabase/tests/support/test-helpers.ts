/**
 * What the end-to-end tests share: a harness per test (stopped however the
 * test ends), a database connection of the test's own, and the checks of
 * the error contract.
 */
import postgres from "postgres";
import { type Harness, type HarnessOptions, startHarness, testUrls } from "./function-harness.ts";

/**
 * Runs `fn` against a fresh harness and stops it afterwards. `h.stop()` is
 * idempotent, so a test may stop early (to flush the refusal ledger).
 */
export async function withHarness(
  options: HarnessOptions,
  fn: (h: Harness) => Promise<void>,
): Promise<void> {
  const h = await startHarness(options);
  const stop = h.stop;
  let stopping: Promise<void> | undefined;
  h.stop = () => stopping ??= stop();
  try {
    await fn(h);
  } finally {
    await h.stop();
  }
}

/** A connection of the test's own, usable after `h.stop()`. */
export async function withDb<T>(fn: (sql: postgres.Sql) => Promise<T>): Promise<T> {
  const sql = postgres(testUrls().databaseUrl, { max: 2, onnotice: () => {} });
  try {
    return await fn(sql);
  } finally {
    await sql.end({ timeout: 1 });
  }
}

/** A pool of `max` connections of the test's own, for calls made at once. */
export async function withPool(
  max: number,
  fn: (sql: postgres.Sql) => Promise<void>,
): Promise<void> {
  const sql = postgres(testUrls().databaseUrl, { max, onnotice: () => {}, prepare: false });
  try {
    await fn(sql);
  } finally {
    await sql.end({ timeout: 5 });
  }
}

export { type ErrorBody, expectError, statusOf } from "./contract.ts";
