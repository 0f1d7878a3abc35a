/**
 * The report's figures before they are drawn: every bucket of the period
 * asked for (an empty one counts zero requests, tokens and cost, and has no
 * rate or latency), one line per org for the busiest orgs, spend against
 * each budget, and the label of rows that name no org.
 */

type Row = Record<string, unknown>;

/** What a row without an org is: a refusal before the caller's org was known. */
export const NO_ORG = "(no org: refused before an org was known)";

export function orgLabel(orgId: unknown): string {
  return orgId === null || orgId === undefined ? NO_ORG : String(orgId);
}

const BUCKET_MS: Record<string, number> = {
  "15 minutes": 15 * 60_000,
  "1 hour": 3_600_000,
  "1 day": 86_400_000,
};
const ORIGIN = Date.UTC(2000, 0, 1);

/** The bucket starts of [from, to), on the clock boundaries ops.usage_report uses. */
export function bucketStarts(from: Date, to: Date, bucket: string): number[] {
  const step = BUCKET_MS[bucket] ?? 3_600_000;
  const first = ORIGIN + Math.floor((from.getTime() - ORIGIN) / step) * step;
  const starts: number[] = [];
  for (let t = first; t < to.getTime(); t += step) starts.push(t);
  return starts;
}

const time = (v: unknown) => new Date(v as string | Date).getTime();

/** Every bucket of the period: the report's rows where there are some, zero counts elsewhere. */
export function fillBuckets(rows: Row[], from: Date, to: Date, bucket: string): Row[] {
  const byStart = new Map(rows.map((r) => [time(r.bucket_start), r]));
  return bucketStarts(from, to, bucket).map((t) =>
    byStart.get(t) ?? {
      bucket_start: new Date(t),
      requests: 0,
      success_rate: null,
      latency_p50_ms: null,
      latency_p95_ms: null,
      latency_p99_ms: null,
      total_tokens: 0,
      estimated_usd: 0,
    }
  );
}

/**
 * Per-org lines for the `limit` busiest orgs: per bucket start, `org_<i>`
 * requests (0 when none) and `rate_<i>` success rate; with each line's label.
 */
export function orgLines(byOrg: Row[], orgSeries: Row[], starts: number[], limit = 6) {
  const top = [...byOrg].sort((a, b) => Number(b.requests) - Number(a.requests)).slice(0, limit);
  const index = new Map(top.map((r, i) => [orgLabel(r.org_id), i]));
  const values = new Map<number, Row>(starts.map((t) => [t, {}]));
  for (const t of starts) {
    for (const i of index.values()) Object.assign(values.get(t)!, { [`org_${i}`]: 0 });
  }
  for (const r of orgSeries) {
    const i = index.get(orgLabel(r.org_id));
    const point = values.get(time(r.bucket_start));
    if (i === undefined || !point) continue;
    point[`org_${i}`] = Number(r.requests);
    point[`rate_${i}`] = r.success_rate === null ? null : Number(r.success_rate);
  }
  return { labels: [...index.keys()], values };
}

const escape = (s: string) =>
  s.replace(
    /[&<>"']/g,
    (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]!,
  );

/** Month-to-date spend against each budget (ops.budget_status), as bars. */
export function budgetBars(budgets: Row[]): string {
  if (budgets.length === 0) return `<p class="empty">No budget is set (ops.budget_set).</p>`;
  return budgets.map((b) => {
    const ratio = Number(b.used_ratio ?? 0);
    const who = b.org_id === null ? "global" : `org ${b.org_id}`;
    const color = ratio >= 1 ? "#dc2626" : ratio >= 0.8 ? "#f59e0b" : "#16a34a";
    return `<div class="budget" data-budget="${escape(who)}"><div class="budget-label">${
      escape(who)
    } (${escape(String(b.mode))}): $${Number(b.spent_usd).toFixed(2)} of $${
      Number(b.monthly_usd).toFixed(2)
    } (${(ratio * 100).toFixed(0)}%)</div><div class="bar"><div style="width:${
      Math.min(100, ratio * 100).toFixed(1)
    }%;background:${color}"></div></div></div>`;
  }).join("\n");
}
