/**
 * The operator report: one self-contained HTML page (no network) with line
 * charts of requests, success rate, latency percentiles, tokens and cost over
 * time (every bucket of the period, empty ones as zero; the success rate
 * against its alert threshold), requests and success rate of the busiest
 * orgs, month-to-date spend against each budget, errors by code, a per-org
 * table and the open alerts with their delivery state. The charts are uPlot (a small,
 * maintained time-series library) read from its npm package when the report
 * is written and inlined into the page: round ticks, UTC time labels, and the
 * values under the cursor in each chart's legend. The buckets come
 * clock-aligned from SQL. When every chart is drawn the body carries
 * `data-charts-drawn="<n>"`; each chart records its tick labels in
 * `data-x-ticks`/`data-y-ticks` (the browser test reads both).
 */
import uPlotScript from "uplot/dist/uPlot.iife.min.js" with { type: "text" };
import uPlotStyle from "uplot/dist/uPlot.min.css" with { type: "text" };
import { bucketStarts, budgetBars, fillBuckets, orgLabel, orgLines } from "./report-parts.ts";

export interface ReportInput {
  from: Date;
  to: Date;
  bucket: string;
  org: string | null;
  series: Array<Record<string, unknown>>;
  byOrg: Array<Record<string, unknown>>;
  /** ops.org_dashboard: each tenant's policy, bucket and quota use, spend against budget. */
  tenants: Array<Record<string, unknown>>;
  alerts: Array<Record<string, unknown>>;
  /** ops.usage_report per org and bucket: the per-org charts. */
  orgSeries: Array<Record<string, unknown>>;
  /** ops.budget_status: month-to-date spend against each budget. */
  budgets: Array<Record<string, unknown>>;
  /** ops.errors_by_code over the period. */
  errors: Array<Record<string, unknown>>;
  /** The success-rate alert's threshold (ops.alert_settings), drawn on the success chart. */
  successThreshold: number;
  generatedAt: Date;
}

const escapeHtml = (s: string) =>
  s.replace(
    /[&<>"']/g,
    (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]!,
  );

/** JSON that is safe inside a <script> element. */
const scriptJson = (value: unknown) =>
  JSON.stringify(value).replace(/</g, "\\u003c").replace(/\u2028/g, "\\u2028").replace(
    /\u2029/g,
    "\\u2029",
  );

const num = (v: unknown) => (v === null || v === undefined ? null : Number(v));

function rowsTable(rows: Array<Record<string, unknown>>, columns: string[], empty: string): string {
  if (rows.length === 0) return `<p class="empty">${escapeHtml(empty)}</p>`;
  const head = columns.map((c) => `<th>${escapeHtml(c)}</th>`).join("");
  const body = rows.map((r) =>
    `<tr>${
      columns.map((c) => {
        const v = c === "org_id" ? orgLabel(r[c]) : r[c];
        const text = v instanceof Date
          ? v.toISOString()
          : v === null || v === undefined
          ? ""
          : String(v);
        return `<td>${escapeHtml(text)}</td>`;
      }).join("")
    }</tr>`
  ).join("");
  return `<table><thead><tr>${head}</tr></thead><tbody>${body}</tbody></table>`;
}

/** The charts' data: one point per bucket, and which series each chart draws. */
function chartData(input: ReportInput) {
  const starts = bucketStarts(input.from, input.to, input.bucket);
  const orgs = orgLines(input.byOrg, input.orgSeries, starts);
  const points = fillBuckets(input.series, input.from, input.to, input.bucket).map((r) => ({
    ...orgs.values.get(new Date(r.bucket_start as string | Date).getTime()),
    t: new Date(r.bucket_start as string | Date).getTime(),
    target: input.successThreshold,
    requests: num(r.requests),
    success_rate: num(r.success_rate),
    p50: num(r.latency_p50_ms),
    p95: num(r.latency_p95_ms),
    p99: num(r.latency_p99_ms),
    tokens: num(r.total_tokens),
    usd: num(r.estimated_usd),
  }));
  const charts = [
    { id: "requests", title: "Requests", series: [["requests", "#2563eb"]] },
    {
      id: "success",
      title: "Success rate (answered / served) and the alert's threshold",
      series: [["success_rate", "#16a34a"], [
        "target",
        "#dc2626",
        `${Math.round(input.successThreshold * 100)}% alert threshold`,
      ]],
      min: 0,
      max: 1,
    },
    {
      id: "latency",
      title: "Latency of answered requests (ms)",
      series: [["p50", "#2563eb"], ["p95", "#f59e0b"], ["p99", "#dc2626"]],
    },
    { id: "tokens", title: "Tokens", series: [["tokens", "#7c3aed"]] },
    { id: "cost", title: "Estimated cost (USD)", series: [["usd", "#0f766e"]] },
    ...orgCharts(orgs.labels),
  ];
  return { points, charts };
}

const ORG_COLORS = ["#2563eb", "#16a34a", "#f59e0b", "#dc2626", "#7c3aed", "#0f766e"];

/** Requests and success rate of the busiest orgs, one line each (none without requests). */
function orgCharts(labels: string[]) {
  if (labels.length === 0) return [];
  const line = (prefix: string) =>
    labels.map((label, i) => [`${prefix}_${i}`, ORG_COLORS[i % ORG_COLORS.length]!, label]);
  return [
    { id: "org-requests", title: "Requests per org (busiest)", series: line("org") },
    {
      id: "org-success",
      title: "Success rate per org (busiest)",
      series: line("rate"),
      format: "success_rate",
      min: 0,
      max: 1,
    },
  ];
}

const PAGE_STYLE = `<style>
  body { font: 14px/1.4 system-ui, sans-serif; margin: 24px; color: #111827; background: #f9fafb; }
  h1 { font-size: 20px; margin: 0 0 4px; } .meta { color: #6b7280; margin-bottom: 16px; }
  .grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(520px, 1fr)); gap: 16px; }
  .card { background: #fff; border: 1px solid #e5e7eb; border-radius: 8px; padding: 12px; }
  .card h2 { font-size: 14px; margin: 0 0 8px; } .chart { min-height: 260px; }
  table { border-collapse: collapse; width: 100%; font-size: 12px; } th, td { text-align: left; padding: 4px 6px; border-bottom: 1px solid #e5e7eb; }
  .alert { color: #b91c1c; } .empty { color: #6b7280; } .card { overflow-x: auto; }
  td { word-break: break-word; max-width: 28em; }
  .budget { margin: 6px 0; } .bar { background: #e5e7eb; height: 10px; border-radius: 4px; }
  .bar > div { height: 10px; border-radius: 4px; }
  .u-legend { font-size: 12px; } .u-legend th { font-weight: 500; }
</style>
`;

/** Draws every chart with uPlot from the page's report-data; marks the body when done. */
const CHARTS_SCRIPT = `<script>
(function () {
  var data = JSON.parse(document.getElementById("report-data").textContent);
  var pts = data.points;
  var utc = function (seconds) { return uPlot.tzDate(new Date(seconds * 1000), "Etc/UTC"); };
  var hhmm = uPlot.fmtDate("{HH}:{mm}"), day = uPlot.fmtDate("{MMM} {D}"), full = uPlot.fmtDate("{YYYY}-{MM}-{DD} {HH}:{mm}");
  var spanDays = pts.length ? (pts[pts.length - 1].t - pts[0].t) / 86400000 : 0;
  // Time ticks: "14:00" within a day, "Nov 25" on day steps, "Nov 25 14:00" across days.
  function timeTicks(u, splits, axis, space, incr) {
    return splits.map(function (s) {
      var d = utc(s);
      if (incr >= 86400) return day(d);
      return spanDays >= 1 && d.getHours() === 0 && d.getMinutes() === 0 ? day(d) + " " + hhmm(d) : hhmm(d);
    });
  }
  function number(v) {
    if (v === null || v === undefined) return "–";
    var a = Math.abs(v);
    if (a >= 1e6) return +(v / 1e6).toPrecision(3) + "M";
    if (a >= 1e3) return +(v / 1e3).toPrecision(3) + "k";
    return a !== 0 && a < 1 ? String(+v.toPrecision(3)) : String(+v.toFixed(2));
  }
  var formats = {
    success_rate: function (v) { return v === null || v === undefined ? "–" : (v * 100).toFixed(1) + " %"; },
    usd: function (v) { return v === null || v === undefined ? "–" : "$" + v.toFixed(v < 1 ? 4 : 2); },
  };
  var xs = pts.map(function (p) { return p.t / 1000; });
  var drawn = 0, plots = [];
  data.charts.forEach(function (chart) {
    var card = document.createElement("div"); card.className = "card";
    var h = document.createElement("h2"); h.textContent = chart.title; card.appendChild(h);
    var box = document.createElement("div"); box.className = "chart"; box.setAttribute("data-chart", chart.id);
    card.appendChild(box);
    document.getElementById("charts").appendChild(card);
    var fmt = formats[chart.format || chart.series[0][0]] || number;
    var yTicks = function (u, splits) {
      var labels = splits.map(chart.max === 1 ? function (v) { return Math.round(v * 100) + " %"; } : number);
      box.setAttribute("data-y-ticks", labels.join("|"));
      return labels;
    };
    var xTicks = function (u, splits, axis, space, incr) {
      var labels = timeTicks(u, splits, axis, space, incr);
      box.setAttribute("data-x-ticks", labels.join("|"));
      return labels;
    };
    var opts = {
      width: Math.max(320, box.clientWidth || 520),
      height: 220,
      tzDate: utc,
      cursor: { drag: { x: false, y: false } },
      legend: { live: true },
      scales: { x: { time: true }, y: chart.max !== undefined ? { range: [chart.min, chart.max] } : { range: function (u, lo, hi) { return [0, hi > 0 ? hi * 1.1 : 1]; } } },
      axes: [
        { values: xTicks, space: 70 },
        { values: yTicks, size: 56, space: 30 },
      ],
      series: [{ label: "time (UTC)", value: function (u, s) { return s === null || s === undefined ? "–" : full(utc(s)); } }].concat(chart.series.map(function (s) {
        return { label: s[2] || s[0], stroke: s[1], width: 2, spanGaps: false, points: { show: pts.length < 60 }, value: function (u, v) { return fmt(v); } };
      })),
    };
    var series = [xs].concat(chart.series.map(function (s) { return pts.map(function (p) { return p[s[0]]; }); }));
    var plot = new uPlot(opts, series, box);
    box.setAttribute("data-series-points", chart.series.map(function (s) {
      return pts.filter(function (p) { return p[s[0]] !== null; }).length;
    }).join("|"));
    if (!pts.length) { var e = document.createElement("p"); e.className = "empty"; e.textContent = "no data"; card.appendChild(e); }
    plots.push(plot);
    drawn++;
  });
  // #hover puts the cursor mid-chart, so a page dump shows the legends' hover values.
  if (location.hash === "#hover") plots.forEach(function (u) { u.setCursor({ left: u.bbox.width / 2 / devicePixelRatio, top: 10 }); });
  document.body.setAttribute("data-charts-drawn", String(drawn));
})();
</script>
`;

/** The open alerts, the charts' grid, the per-org table and the tenants' table. */
function tablesHtml(input: ReportInput): string {
  return `<div class="card"><h2 class="${
    input.alerts.length ? "alert" : ""
  }">Open alerts (${input.alerts.length})</h2>
${
    rowsTable(input.alerts, [
      "kind",
      "subject",
      "observed",
      "threshold",
      "raised_at",
      "acknowledged_by",
      "muted_until",
      "delivery",
    ], "No open alerts.")
  }</div>
<div class="grid" id="charts"></div>
<div class="grid" style="margin-top:16px">
<div class="card"><h2>Spend this month against each budget</h2>
${budgetBars(input.budgets)}</div>
<div class="card"><h2>Errors by code (served: counts against the success rate)</h2>
${rowsTable(input.errors, ["error_code", "served", "requests"], "No errors in this period.")}</div>
</div>
<div class="card" style="margin-top:16px"><h2>Per org</h2>
${
    rowsTable(input.byOrg, [
      "org_id",
      "requests",
      "success_rate",
      "latency_p50_ms",
      "latency_p95_ms",
      "latency_p99_ms",
      "total_tokens",
      "estimated_usd",
    ], "No requests in this period.")
  }</div>
<div class="card" style="margin-top:16px"><h2>Tenants: policy, use now, spend this month</h2>
${
    rowsTable(input.tenants, [
      "org_id",
      "enabled",
      "org_max_requests",
      "user_max_requests",
      "org_bucket_used",
      "org_bucket_limit",
      "org_tokens_last_day",
      "org_tokens_per_day",
      "month_to_date_usd",
      "reserved_usd",
      "budget_usd",
      "budget_mode",
      "budget_used_ratio",
    ], "No tenant has a policy, a budget or spend this month.")
  }</div>
`;
}

export function renderReport(input: ReportInput): string {
  const scope = input.org ? `org ${input.org}` : "all orgs";
  return `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>agent-chat report</title>
${PAGE_STYLE}<style>${uPlotStyle}</style>
<script>${uPlotScript.replace(/<\/script/gi, "<\\/script")}</script>
</head>
<body>
<h1>agent-chat: usage and health</h1>
<div class="meta">${escapeHtml(scope)} · ${escapeHtml(input.from.toISOString())} → ${
    escapeHtml(input.to.toISOString())
  } · buckets of ${escapeHtml(input.bucket)} · times in UTC · generated ${
    escapeHtml(input.generatedAt.toISOString())
  }</div>
${tablesHtml(input)}<script id="report-data" type="application/json">${
    scriptJson(chartData(input))
  }</script>
${CHARTS_SCRIPT}</body>
</html>
`;
}
