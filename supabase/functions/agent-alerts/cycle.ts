/**
 * Owns one delivery cycle: begin (check and claim), send, record. Each
 * destination sends its notifications in order, one at a time (a resolve
 * never overtakes its trigger), and all destinations at once, so a slow or
 * dead one costs its own timeout and holds no other. After a destination's
 * first failure in a cycle its remaining notifications are left for the next
 * one (skipped: the attempt is given back).
 */
import type { AlertsDatabase, CheckSummary } from "./database.ts";
import type {
  ClaimedNotification,
  DeliveryResult,
  Destination,
  DestinationName,
} from "./notification.ts";

export interface CycleSettings {
  retryBaseSeconds: number;
  maxAttempts: number;
  /** Rows claimed per cycle; with the send timeout, bounds how long a cycle takes. */
  claimLimit: number;
  leaseSeconds: number;
}

export interface CycleSummary {
  destinations: DestinationName[];
  check: CheckSummary;
  claimed: number;
  sent: Record<string, number>;
  statuses: Record<string, number>;
  ms: number;
}

async function sendInOrder(
  destination: Destination,
  rows: ClaimedNotification[],
): Promise<DeliveryResult[]> {
  const results: DeliveryResult[] = [];
  let failed = false;
  for (const n of rows) {
    const base = { id: n.id, claim_token: n.claim_token };
    if (failed) {
      results.push({ ...base, outcome: "skipped" });
      continue;
    }
    const sent = await destination.send(n);
    failed = sent.outcome === "error";
    results.push({ ...base, ...sent });
  }
  return results;
}

export async function deliver(
  claimed: ClaimedNotification[],
  destinations: Destination[],
): Promise<DeliveryResult[]> {
  const batches = destinations.map((d) =>
    sendInOrder(d, claimed.filter((n) => n.destination === d.name).sort((a, b) => a.id - b.id))
  );
  return (await Promise.all(batches)).flat();
}

export async function runCycle(
  deps: { db: AlertsDatabase; destinations: Destination[]; now?: () => Date },
  settings: CycleSettings,
): Promise<CycleSummary> {
  const started = performance.now();
  const names = deps.destinations.map((d) => d.name);
  const { check, claimed } = await deps.db.beginCycle(names, {
    limit: settings.claimLimit,
    leaseSeconds: settings.leaseSeconds,
    ...(deps.now ? { now: deps.now() } : {}),
  });
  const results = await deliver(claimed, deps.destinations);
  const statuses = results.length === 0 ? {} : await deps.db.record(results, {
    retryBaseSeconds: settings.retryBaseSeconds,
    maxAttempts: settings.maxAttempts,
    ...(deps.now ? { now: deps.now() } : {}),
  });
  const sent: Record<string, number> = {};
  for (const r of results) sent[r.outcome] = (sent[r.outcome] ?? 0) + 1;
  return {
    destinations: names,
    check,
    claimed: claimed.length,
    sent,
    statuses,
    ms: Math.round(performance.now() - started),
  };
}
