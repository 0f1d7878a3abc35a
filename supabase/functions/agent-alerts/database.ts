/**
 * Owns agent-alerts' two calls to Postgres, through the Data API as the
 * service role: begin a cycle (report destinations, check, claim) and record
 * its sends.
 */
import type { SupabaseClient } from "@supabase/supabase-js";
import type { ClaimedNotification, DeliveryResult, DestinationName } from "./notification.ts";

export interface CheckSummary {
  raised: number;
  resolved: number;
  muted: number;
  open: number;
}

export interface AlertsDatabase {
  beginCycle(
    destinations: DestinationName[],
    options: { limit: number; leaseSeconds: number; now?: Date },
  ): Promise<{ check: CheckSummary; claimed: ClaimedNotification[] }>;
  record(
    results: DeliveryResult[],
    options: { retryBaseSeconds: number; maxAttempts: number; now?: Date },
  ): Promise<Record<string, number>>;
}

export function createRpcAlertsDatabase(client: SupabaseClient): AlertsDatabase {
  const call = async <T>(fn: string, args: Record<string, unknown>): Promise<T> => {
    const { data, error } = await client.rpc(fn, args);
    if (error) throw new Error(`${fn}: ${error.message}`);
    return data as T;
  };
  const at = (now?: Date) => (now ? { p_now: now.toISOString() } : {});
  return {
    beginCycle: (destinations, o) =>
      call("agent_alerts_begin_cycle", {
        p_destinations: destinations,
        p_limit: o.limit,
        p_lease_seconds: o.leaseSeconds,
        ...at(o.now),
      }),
    record: (results, o) =>
      call("agent_alerts_record", {
        p_results: results,
        p_retry_base_seconds: o.retryBaseSeconds,
        p_max_attempts: o.maxAttempts,
        ...at(o.now),
      }),
  };
}
