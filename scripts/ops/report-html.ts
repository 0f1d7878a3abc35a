/**
 * The operator report: one self-contained HTML page (no network) with line
 * charts of requests, success rate, latency percentiles, tokens and cost over
 * time, a per-org table and the open alerts. The data is embedded as JSON and
 * drawn to inline SVG by a small script; when it is done the body carries
 * `data-charts-drawn="<n>"`, which the browser test reads.
 */

export interface ReportInput {
  from: Date;
  to: Date;
  bucket: string;
  org: string | null;
  series: Array<Record<string, unknown>>;
  byOrg: Array<Record<string, unknown>>;
  alerts: Array<Record<string, unknown>>;
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
        const v = r[c];
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

export function renderReport(input: ReportInput): string {
  const points = input.series.map((r) => ({
    t: new Date(r.bucket_start as string | Date).getTime(),
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
      title: "Success rate (answered / served)",
      series: [["success_rate", "#16a34a"]],
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
  ];
  const scope = input.org ? `org ${input.org}` : "all orgs";
  return `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>agent-chat report</title>
<style>
  body { font: 14px/1.4 system-ui, sans-serif; margin: 24px; color: #111827; background: #f9fafb; }
  h1 { font-size: 20px; margin: 0 0 4px; } .meta { color: #6b7280; margin-bottom: 16px; }
  .grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(520px, 1fr)); gap: 16px; }
  .card { background: #fff; border: 1px solid #e5e7eb; border-radius: 8px; padding: 12px; }
  .card h2 { font-size: 14px; margin: 0 0 8px; } svg { width: 100%; height: 200px; }
  .legend span { margin-right: 12px; font-size: 12px; } .legend i { display: inline-block; width: 10px; height: 10px; margin-right: 4px; }
  table { border-collapse: collapse; width: 100%; font-size: 12px; } th, td { text-align: left; padding: 4px 6px; border-bottom: 1px solid #e5e7eb; }
  .alert { color: #b91c1c; } .empty { color: #6b7280; }
</style>
</head>
<body>
<h1>agent-chat: usage and health</h1>
<div class="meta">${escapeHtml(scope)} · ${escapeHtml(input.from.toISOString())} → ${
    escapeHtml(input.to.toISOString())
  } · buckets of ${escapeHtml(input.bucket)} · generated ${
    escapeHtml(input.generatedAt.toISOString())
  }</div>
<div class="card"><h2 class="${
    input.alerts.length ? "alert" : ""
  }">Open alerts (${input.alerts.length})</h2>
${
    rowsTable(input.alerts, [
      "kind",
      "subject",
      "observed",
      "threshold",
      "raised_at",
      "last_seen_at",
    ], "No open alerts.")
  }</div>
<div class="grid" id="charts"></div>
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
<script id="report-data" type="application/json">${scriptJson({ points, charts })}</script>
<script>
(function () {
  var data = JSON.parse(document.getElementById("report-data").textContent);
  var NS = "http://www.w3.org/2000/svg", W = 520, H = 200, L = 56, R = 10, T = 10, B = 28;
  function el(name, attrs, text) {
    var e = document.createElementNS(NS, name);
    for (var k in attrs) e.setAttribute(k, attrs[k]);
    if (text !== undefined) e.textContent = text;
    return e;
  }
  function fmt(v) {
    if (v === 0) return "0";
    if (Math.abs(v) >= 1000) return (v / 1000).toFixed(1) + "k";
    return Math.abs(v) < 1 ? Number(v.toPrecision(2)).toString() : (Math.round(v * 100) / 100).toString();
  }
  var drawn = 0, pts = data.points;
  data.charts.forEach(function (chart) {
    var card = document.createElement("div"); card.className = "card";
    var h = document.createElement("h2"); h.textContent = chart.title; card.appendChild(h);
    var svg = el("svg", { viewBox: "0 0 " + W + " " + H, "class": "chart", "data-chart": chart.id, role: "img", "aria-label": chart.title });
    var values = [];
    chart.series.forEach(function (s) { pts.forEach(function (p) { if (p[s[0]] !== null) values.push(p[s[0]]); }); });
    var t0 = pts.length ? pts[0].t : 0, t1 = pts.length ? pts[pts.length - 1].t : 1;
    if (t1 === t0) t1 = t0 + 1;
    var lo = chart.min !== undefined ? chart.min : 0;
    var hi = chart.max !== undefined ? chart.max : Math.max.apply(null, values.concat([lo + 1e-9]));
    var x = function (t) { return L + (t - t0) / (t1 - t0) * (W - L - R); };
    var y = function (v) { return H - B - (v - lo) / (hi - lo) * (H - T - B); };
    for (var i = 0; i <= 4; i++) {
      var v = lo + (hi - lo) * i / 4;
      svg.appendChild(el("line", { x1: L, x2: W - R, y1: y(v), y2: y(v), stroke: "#e5e7eb" }));
      svg.appendChild(el("text", { x: L - 6, y: y(v) + 4, "text-anchor": "end", "font-size": 10, fill: "#6b7280" }, fmt(v)));
    }
    [t0, t1].forEach(function (t, j) {
      svg.appendChild(el("text", { x: x(t), y: H - 8, "text-anchor": j ? "end" : "start", "font-size": 10, fill: "#6b7280" },
        new Date(t).toISOString().slice(5, 16).replace("T", " ")));
    });
    var legend = document.createElement("div"); legend.className = "legend";
    chart.series.forEach(function (s) {
      var d = "", n = 0;
      pts.forEach(function (p) {
        if (p[s[0]] === null) return;
        d += (n++ ? "L" : "M") + x(p.t).toFixed(1) + "," + y(p[s[0]]).toFixed(1);
      });
      if (n === 1) d += "h2";
      if (n) svg.appendChild(el("path", { d: d, fill: "none", stroke: s[1], "stroke-width": 2, "class": "series", "data-points": n }));
      var item = document.createElement("span"); var sw = document.createElement("i"); sw.style.background = s[1];
      item.appendChild(sw); item.appendChild(document.createTextNode(s[0])); legend.appendChild(item);
    });
    if (!values.length) svg.appendChild(el("text", { x: W / 2, y: H / 2, "text-anchor": "middle", fill: "#6b7280" }, "no data"));
    card.appendChild(svg); card.appendChild(legend);
    document.getElementById("charts").appendChild(card);
    drawn++;
  });
  document.body.setAttribute("data-charts-drawn", String(drawn));
})();
</script>
</body>
</html>
`;
}
