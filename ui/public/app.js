/* global document, window, location, fetch, Node, URLSearchParams, EventSource, IntersectionObserver, requestAnimationFrame */
// The web UI's pages: plain ES modules, no build step. Routes live in the hash (#/, #/service/x,
// #/trace/id, #/alerts); every page reads the server's JSON API and draws with uPlot.
import uPlot from "/vendor/uPlot.esm.js";

const main = document.getElementById("main");

const LABELS = {
  calls: "Calls",
  cost_usd: "Cost (USD)",
  latency_p95_ms: "Latency p95 (ms)",
  error_rate: "Error rate",
  low_confidence_rate: "Low confidence",
  confidence_gate_block_rate: "Gate blocks",
  prompt_diff_violation_rate: "Prompt diff violations",
  shadow_disagreement_rate: "Shadow disagreement",
  deterministic_fallback_rate: "Deterministic fallbacks",
  golden_financial_failure_rate: "Golden failures",
  fallback_rate: "Fallbacks",
  retry_rate: "Retries",
};
const FLEET_COLUMNS = [
  "calls",
  "cost_usd",
  "error_rate",
  "latency_p95_ms",
  "low_confidence_rate",
  "confidence_gate_block_rate",
  "prompt_diff_violation_rate",
  "shadow_disagreement_rate",
  "deterministic_fallback_rate",
  "golden_financial_failure_rate",
];
const RATES = [
  "error_rate",
  "low_confidence_rate",
  "confidence_gate_block_rate",
  "prompt_diff_violation_rate",
  "shadow_disagreement_rate",
  "deterministic_fallback_rate",
  "golden_financial_failure_rate",
  "fallback_rate",
  "retry_rate",
];

/** An element with attributes and children (strings become text: never HTML). */
function h(tag, attributes = {}, ...children) {
  const element = document.createElement(tag);
  for (const [key, value] of Object.entries(attributes)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") element.className = value;
    else if (key.startsWith("on")) element.addEventListener(key.slice(2), value);
    else element.setAttribute(key, String(value));
  }
  for (const child of children.flat(Infinity)) {
    if (child === undefined || child === null || child === false) continue;
    element.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return element;
}

/** A value as shown: rates as percentages, money with enough digits, counts grouped. */
export function format(metric, value) {
  if (value === null || value === undefined) return "–";
  if (metric.endsWith("_rate")) return `${(value * 100).toFixed(1)}%`;
  if (metric.includes("cost")) return `$${value.toFixed(value >= 1 ? 2 : 4)}`;
  if (metric.endsWith("_ms")) return `${Math.round(value).toLocaleString("en-US")} ms`;
  return Math.round(value).toLocaleString("en-US");
}

function when(ms) {
  return new Date(ms).toISOString().replace("T", " ").slice(0, 19);
}

async function api(path) {
  const response = await fetch(path, { headers: { accept: "application/json" } });
  const body = await response.json();
  if (!response.ok) throw new Error(body.error ?? `HTTP ${response.status}`);
  return body;
}

function showError(error) {
  main.replaceChildren(
    h("h1", {}, "Something went wrong"),
    h("p", { role: "alert" }, error.message),
  );
}

// Sparklines are drawn when they scroll into view: a fleet of many services stays fast.
const pending = new Map();
const observer = new IntersectionObserver((entries) => {
  for (const entry of entries) {
    if (!entry.isIntersecting) continue;
    const draw = pending.get(entry.target);
    pending.delete(entry.target);
    observer.unobserve(entry.target);
    draw?.();
  }
});

function sparkline(times, values, breach) {
  const box = h("span", { class: "spark", "aria-hidden": "true" });
  pending.set(box, () => {
    new uPlot(
      {
        width: 100,
        height: 26,
        legend: { show: false },
        cursor: { show: false },
        select: { show: false },
        scales: { x: { time: false } },
        axes: [{ show: false }, { show: false }],
        series: [{}, { stroke: breach ? "#b00020" : "#0b5cad", width: 1, points: { show: false } }],
      },
      [times.map((t) => t / 1000), values],
      box,
    );
  });
  observer.observe(box);
  return box;
}

function incidentList(incidents) {
  return h(
    "table",
    { "aria-label": "Incidents" },
    h(
      "thead",
      {},
      h(
        "tr",
        {},
        ["State", "Service", "Rule", "Observed", "Threshold", "Fired (window)", "Last change"].map(
          (label) => h("th", { scope: "col" }, label),
        ),
      ),
    ),
    h(
      "tbody",
      {},
      incidents.map((a) =>
        h(
          "tr",
          { "data-alert-id": a.alertId, "data-state": a.state },
          h("td", { class: `state-${a.state}` }, a.state),
          h("td", {}, h("a", { href: `#/service/${encodeURIComponent(a.service)}` }, a.service)),
          h("td", {}, a.rule),
          h("td", { class: "num" }, format(a.metric, a.observedValue)),
          h("td", { class: "num" }, format(a.metric, a.threshold)),
          h("td", {}, when(a.firedAt)),
          h("td", {}, when(a.emittedAt)),
        ),
      ),
    ),
  );
}

async function fleetPage() {
  const view = await api("/api/fleet?range=1h");
  const rulesByMetric = new Map();
  for (const rule of view.rules) rulesByMetric.set(rule.metric, rule);
  const firing = view.firing.length
    ? h(
        "section",
        { class: "firing", "aria-labelledby": "firing-title" },
        h("h2", { id: "firing-title" }, `Firing alerts (${view.firing.length})`),
        incidentList(view.firing),
      )
    : h("p", { class: "muted", id: "no-firing" }, "No alert is firing.");
  const head = h(
    "tr",
    {},
    h("th", { scope: "col" }, "Service"),
    FLEET_COLUMNS.map((c) => h("th", { scope: "col", class: "num" }, LABELS[c])),
  );
  const rows = view.services.map((s) =>
    h(
      "tr",
      { "data-service": s.service, "data-window-start": s.latest.windowStart },
      h(
        "th",
        { scope: "row" },
        h("a", { href: `#/service/${encodeURIComponent(s.service)}` }, s.service),
      ),
      FLEET_COLUMNS.map((column) => {
        const rule = rulesByMetric.get(column);
        const breach = rule && s.breaching.includes(rule.key) ? rule.key : undefined;
        const value = s.latest[column];
        return h(
          "td",
          {
            class: breach ? "num breach" : "num",
            "data-metric": column,
            "data-value": value ?? "",
            "data-breach": breach,
            title: breach ? `breaches ${breach} (${format(column, rule.threshold)})` : undefined,
          },
          h("span", { class: "value" }, format(column, value)),
          sparkline(s.times, s.series[column] ?? [], breach !== undefined),
        );
      }),
    ),
  );
  main.replaceChildren(
    h("h1", {}, "Fleet"),
    firing,
    h(
      "p",
      { class: "muted" },
      view.services.length
        ? `Each service's newest window, and its windows over the hour before (${when(view.from)} – ${when(view.to)} UTC). Highlighted: a value that breaches its alert rule.`
        : "No rollups stored yet.",
    ),
    h(
      "table",
      { id: "fleet", "aria-label": "Services" },
      h("thead", {}, head),
      h("tbody", {}, rows),
    ),
  );
}

/** uPlot's hook drawing the thresholds (horizontal) and incidents (vertical) of a chart. */
function marksPlugin(thresholds, incidents) {
  return {
    hooks: {
      draw: [
        (u) => {
          const { ctx } = u;
          const { left, top, width, height } = u.bbox;
          ctx.save();
          ctx.lineWidth = 2;
          ctx.setLineDash([6, 4]);
          ctx.strokeStyle = "#b00020";
          for (const t of thresholds) {
            const y = u.valToPos(t.threshold, "y", true);
            if (y < top || y > top + height) continue;
            ctx.beginPath();
            ctx.moveTo(left, y);
            ctx.lineTo(left + width, y);
            ctx.stroke();
          }
          ctx.setLineDash([]);
          ctx.strokeStyle = "#8a4b00";
          for (const incident of incidents)
            for (const at of [incident.firedAt, incident.resolvedAt]) {
              if (at === undefined) continue;
              const x = u.valToPos(at / 1000, "x", true);
              if (x < left || x > left + width) continue;
              ctx.beginPath();
              ctx.moveTo(x, top);
              ctx.lineTo(x, top + height);
              ctx.stroke();
            }
          ctx.restore();
        },
      ],
    },
  };
}

function resolvedAt(incident) {
  if (incident.state !== "resolved") return undefined;
  return incident.windowEnd;
}

function chart(title, id, times, series, options = {}) {
  const thresholds = options.thresholds ?? [];
  const incidents = (options.incidents ?? []).map((i) => ({ ...i, resolvedAt: resolvedAt(i) }));
  const box = h("div", { class: "plot" });
  const colors = ["#0b5cad", "#17622f", "#8a4b00", "#6b2fa3"];
  const values = series.map((s) => s.values);
  // The threshold stays in view: the y scale reaches it.
  const top = Math.max(0, ...thresholds.map((t) => t.threshold * 1.2));
  const figure = h(
    "section",
    { class: "chart", id: `chart-${id}`, "data-chart": id, "aria-label": title },
    h("h2", {}, title),
    box,
    h(
      "ul",
      { class: "marks" },
      thresholds.map((t) =>
        h(
          "li",
          { class: "threshold", "data-threshold": t.key, "data-value": t.threshold },
          `threshold ${format(id, t.threshold)} (${t.key})`,
        ),
      ),
      incidents.map((i) =>
        h(
          "li",
          {
            class: "incident",
            "data-incident": i.alertId,
            "data-fired": i.firedAt,
            "data-resolved": i.resolvedAt ?? "",
          },
          `${i.rule}: fired ${when(i.firedAt)}${i.resolvedAt ? `, resolved ${when(i.resolvedAt)}` : ", firing"}`,
        ),
      ),
    ),
  );
  requestAnimationFrame(() => {
    new uPlot(
      {
        width: Math.max(420, box.clientWidth || 440),
        height: 180,
        scales: thresholds.length
          ? { y: { range: (_u, min, max) => [Math.min(0, min), Math.max(max, top)] } }
          : {},
        series: [
          {},
          ...series.map((s, i) => ({
            label: s.label,
            stroke: colors[i % colors.length],
            width: 1.5,
          })),
        ],
        axes: [{}, { size: 80 }],
        plugins: [marksPlugin(thresholds, incidents)],
      },
      [times.map((t) => t / 1000), ...values],
      box,
    );
  });
  return figure;
}

function query(search) {
  return Object.fromEntries(new URLSearchParams(search));
}

const RANGES = ["1h", "6h", "24h", "7d"];
const BUCKETS = ["1m", "5m", "15m", "1h", "6h"];

async function servicePage(service, params) {
  const range = params.range ?? "6h";
  const bucket = params.bucket ?? "";
  const path = `/api/service/${encodeURIComponent(service)}?range=${encodeURIComponent(range)}${bucket ? `&bucket=${encodeURIComponent(bucket)}` : ""}`;
  const view = await api(path);
  const go = (next) => {
    location.hash = `#/service/${encodeURIComponent(service)}?${new URLSearchParams(next)}`;
  };
  const select = (id, label, choices, value, key) =>
    h(
      "label",
      { for: id },
      `${label} `,
      h(
        "select",
        {
          id,
          onchange: (event) =>
            go({ range, ...(bucket ? { bucket } : {}), [key]: event.target.value }),
        },
        choices.map((c) => h("option", { value: c, selected: c === value }, c === "" ? "auto" : c)),
      ),
    );
  const total = (name) => (view.series[name] ?? []).reduce((sum, v) => sum + (v ?? 0), 0);
  const totals = [
    ["calls", "Calls", total("calls")],
    ["cost_usd", "Cost (USD)", total("cost_usd")],
    ["errors", "Errors", total("errors")],
    ["prompt_tokens", "Prompt tokens", total("prompt_tokens")],
    ["completion_tokens", "Completion tokens", total("completion_tokens")],
  ];
  const charts = [
    chart("Calls", "calls", view.times, [{ label: "calls", values: view.series.calls }]),
    chart("Cost (USD)", "cost_usd", view.times, [{ label: "cost", values: view.series.cost_usd }]),
    chart("Tokens", "tokens", view.times, [
      { label: "prompt", values: view.series.prompt_tokens },
      { label: "completion", values: view.series.completion_tokens },
    ]),
    chart(
      "Latency (ms)",
      "latency_ms",
      view.times,
      [
        { label: "p50", values: view.series.p50_ms },
        { label: "p95", values: view.series.p95_ms },
        { label: "p99", values: view.series.p99_ms },
      ],
      {
        thresholds: view.rules.filter((r) => r.metric === "latency_p95_ms"),
        incidents: view.incidents.filter((i) => i.metric === "latency_p95_ms"),
      },
    ),
    ...RATES.map((rate) =>
      chart(LABELS[rate], rate, view.times, [{ label: rate, values: view.series[rate] }], {
        thresholds: view.rules.filter((r) => r.metric === rate),
        incidents: view.incidents.filter((i) => i.metric === rate),
      }),
    ),
  ];
  const models = h(
    "table",
    { id: "models", "aria-label": "Models" },
    h(
      "thead",
      {},
      h(
        "tr",
        {},
        h("th", { scope: "col" }, "Model"),
        [
          "calls",
          "cost_usd",
          "error_rate",
          "prompt_tokens",
          "completion_tokens",
          "p50_ms",
          "p95_ms",
          "p99_ms",
        ].map((c) => h("th", { scope: "col", class: "num" }, c.replaceAll("_", " "))),
      ),
    ),
    h(
      "tbody",
      {},
      view.models.map((m) =>
        h(
          "tr",
          { "data-model": m.model },
          h("th", { scope: "row" }, m.model),
          [
            "calls",
            "cost_usd",
            "error_rate",
            "prompt_tokens",
            "completion_tokens",
            "p50_ms",
            "p95_ms",
            "p99_ms",
          ].map((c) =>
            h("td", { class: "num", "data-metric": c, "data-value": m[c] ?? "" }, format(c, m[c])),
          ),
        ),
      ),
    ),
  );
  const recent = h(
    "table",
    { id: "recent", "aria-label": "Recent failed and slow calls" },
    h(
      "thead",
      {},
      h(
        "tr",
        {},
        ["Why", "Ended", "Kind", "Model", "Tool", "Duration", "Status", "Trace"].map((c) =>
          h("th", { scope: "col" }, c),
        ),
      ),
    ),
    h(
      "tbody",
      {},
      view.recentCalls.map((s) =>
        h(
          "tr",
          { "data-span-id": s.span_id, "data-why": s.why },
          h("td", {}, s.why),
          h("td", {}, when(s.end_time)),
          h("td", {}, s.kind),
          h("td", {}, s.model ?? "–"),
          h("td", {}, s.tool_name ?? "–"),
          h("td", { class: "num" }, format("duration_ms", s.duration_ms)),
          h("td", {}, s.error_type ? `${s.status} (${s.error_type})` : s.status),
          h(
            "td",
            {},
            h("a", { href: `#/trace/${s.trace_id}` }, `trace ${s.trace_id.slice(0, 12)}…`),
          ),
        ),
      ),
    ),
  );
  main.replaceChildren(
    h("h1", {}, service),
    h(
      "div",
      { class: "controls" },
      select(
        "range",
        "Range",
        RANGES.includes(range) ? RANGES : [range, ...RANGES],
        range,
        "range",
      ),
      select(
        "bucket",
        "Bucket",
        ["", ...(BUCKETS.includes(bucket) || !bucket ? BUCKETS : [bucket, ...BUCKETS])],
        bucket,
        "bucket",
      ),
      h(
        "span",
        { class: "muted" },
        `${when(view.from)} – ${when(view.to)} UTC, buckets of ${view.bucketMs / 1000} s`,
      ),
    ),
    h(
      "dl",
      { id: "totals", class: "controls" },
      totals.map(([key, label, value]) => [
        h("dt", {}, label),
        h("dd", { "data-metric": key, "data-value": value }, format(key, value)),
      ]),
    ),
    h("div", { class: "charts" }, charts),
    h("h2", {}, "Models"),
    models,
    h("h2", {}, "Recent failed and slowest calls"),
    recent,
  );
}

function spanTree(spans) {
  const byId = new Map(spans.map((s) => [s.span_id, { span: s, children: [] }]));
  const roots = [];
  for (const node of byId.values()) {
    const parent = node.span.parent_span_id ? byId.get(node.span.parent_span_id) : undefined;
    if (parent) parent.children.push(node);
    else roots.push(node);
  }
  return roots;
}

function spanLabel(s) {
  if (s.kind === "tool_call") return `tool call ${s.tool_name ?? ""}`.trim();
  if (s.kind === "model_call") return `model call ${s.model ?? ""}`.trim();
  return `${s.kind} ${s.mcp_method ?? s.tool_name ?? ""}`.trim();
}

async function tracePage(id) {
  const view = await api(`/api/trace/${encodeURIComponent(id)}`);
  const start = Math.min(...view.spans.map((s) => s.start_time));
  const end = Math.max(...view.spans.map((s) => s.end_time));
  const span = Math.max(1, end - start);
  const render = (node, depth = 0) => {
    const s = node.span;
    const details = [
      format("duration_ms", s.duration_ms),
      s.prompt_tokens !== null ? `${s.prompt_tokens} + ${s.completion_tokens} tokens` : undefined,
      s.cost_usd !== null ? format("cost_usd", s.cost_usd) : undefined,
      s.error_type ? `${s.status} (${s.error_type})` : s.status,
      s.confidence !== null ? `confidence ${s.confidence.toFixed(2)}` : undefined,
      s.confidence_gate_threshold !== null ? `gate ${s.confidence_gate_threshold}` : undefined,
      s.retries ? `${s.retries} retries` : undefined,
      s.fallback_used ? "fallback used" : undefined,
      s.high_risk_path ? "high-risk path" : undefined,
      s.deterministic_fallback_triggered ? "deterministic fallback" : undefined,
      s.prompt_diff_score !== null ? `prompt diff ${s.prompt_diff_score.toFixed(2)}` : undefined,
      s.shadow_agreement !== null
        ? `shadow ${s.shadow_agreement ? "agrees" : "disagrees"}`
        : undefined,
      s.is_golden_financial_scenario
        ? `golden ${s.golden_scenario_passed ? "passed" : "failed"}`
        : undefined,
    ].filter(Boolean);
    return h(
      "li",
      { "data-span-id": s.span_id, "data-kind": s.kind, "data-parent": s.parent_span_id ?? "" },
      h(
        "div",
        { class: "span-row", style: `--depth:${depth}` },
        h(
          "div",
          {},
          h("strong", {}, spanLabel(s)),
          h("div", { class: "span-details" }, `${s.service} · ${details.join(" · ")}`),
        ),
        h(
          "div",
          {
            class: "bar-track",
            role: "img",
            "aria-label": `${spanLabel(s)}: ${format("duration_ms", s.duration_ms)}`,
          },
          h("span", {
            class: s.status === "ok" ? "bar" : "bar error",
            style: `left:${(((s.start_time - start) / span) * 100).toFixed(2)}%;width:${((Math.max(0, s.end_time - s.start_time) / span) * 100).toFixed(2)}%`,
          }),
        ),
      ),
      node.children.length
        ? h(
            "ul",
            {},
            node.children.map((child) => render(child, depth + 1)),
          )
        : undefined,
    );
  };
  main.replaceChildren(
    h("h1", {}, "Trace"),
    h(
      "p",
      { class: "muted" },
      `${view.traceId} · ${view.spans.length} spans · ${span} ms · ${when(start)} UTC`,
    ),
    h(
      "div",
      { class: "tree", id: "trace" },
      h(
        "ul",
        {},
        spanTree(view.spans).map((root) => render(root)),
      ),
    ),
  );
}

async function pipelinePage() {
  const view = await api("/api/pipeline");
  const columns = [
    ["lag", "Consumer lag"],
    ["late", "Late events"],
    ["deadLettered", "Dead-lettered"],
    ["handled", "Handled"],
  ];
  main.replaceChildren(
    h("h1", {}, "Pipeline"),
    view.endpoints.length === 0
      ? h(
          "p",
          { class: "muted", id: "no-endpoints" },
          "No metrics endpoints configured: give the processors' and sinks' /metrics URLs with --metrics-url (MCPO_UI_METRICS_URL).",
        )
      : h(
          "table",
          { id: "pipeline", "aria-label": "Processors and sinks" },
          h(
            "thead",
            {},
            h(
              "tr",
              {},
              h("th", { scope: "col" }, "Endpoint"),
              h("th", { scope: "col" }, "Component"),
              h("th", { scope: "col" }, "State"),
              columns.map(([, label]) => h("th", { scope: "col", class: "num" }, label)),
            ),
          ),
          h(
            "tbody",
            {},
            view.endpoints.map((e) =>
              h(
                "tr",
                { "data-url": e.url, "data-up": e.up },
                h("th", { scope: "row" }, e.url),
                h("td", {}, e.component ?? "–"),
                h(
                  "td",
                  { class: e.up ? "state-resolved" : "state-firing" },
                  e.up ? "up" : `down (${e.error})`,
                ),
                columns.map(([key]) =>
                  h(
                    "td",
                    {
                      class: key === "deadLettered" && e[key] > 0 ? "num breach" : "num",
                      "data-metric": key,
                      "data-value": e[key] ?? "",
                    },
                    format(key, e[key]),
                  ),
                ),
              ),
            ),
          ),
        ),
  );
}

let stream;

async function alertsPage(params) {
  const filter = new URLSearchParams();
  for (const key of ["service", "rule", "state"]) if (params[key]) filter.set(key, params[key]);
  const view = await api(`/api/alerts?${filter}`);
  const go = (key, value) => {
    const next = Object.fromEntries(
      Object.entries({ ...params, [key]: value }).filter(([, v]) => v !== undefined && v !== ""),
    );
    location.hash = `#/alerts?${new URLSearchParams(next)}`;
  };
  const select = (key, label, choices) =>
    h(
      "label",
      { for: `filter-${key}` },
      `${label} `,
      h(
        "select",
        { id: `filter-${key}`, onchange: (event) => go(key, event.target.value) },
        ["", ...choices].map((c) =>
          h("option", { value: c, selected: (params[key] ?? "") === c }, c || "all"),
        ),
      ),
    );
  const live = h("ul", { class: "live-list", id: "live" });
  main.replaceChildren(
    h("h1", {}, "Alerts"),
    h(
      "div",
      { class: "controls" },
      select("service", "Service", view.services),
      select("rule", "Rule", view.rules),
      select("state", "State", ["firing", "resolved"]),
    ),
    h("h2", {}, "Live transitions"),
    h("p", { class: "muted", id: "live-status" }, "Waiting for transitions…"),
    live,
    h("h2", {}, `Incidents (${view.incidents.length})`),
    incidentList(view.incidents),
  );
  stream?.close();
  stream = new EventSource("/api/alerts/stream");
  stream.addEventListener("alert", (event) => {
    const a = JSON.parse(event.data);
    if (params.service && a.service !== params.service) return;
    if (params.rule && a.rule !== params.rule) return;
    document.getElementById("live-status")?.replaceChildren("Live:");
    live.prepend(
      h(
        "li",
        { "data-alert-id": a.alertId, "data-state": a.state },
        h("span", { class: `state-${a.state}` }, a.state),
        ` ${when(a.emittedAt)} ${a.service} ${a.rule} ${format(a.metric, a.observedValue)} (threshold ${format(a.metric, a.threshold)})`,
      ),
    );
  });
}

async function route() {
  const [path, search = ""] = location.hash.replace(/^#/, "").split("?");
  const params = query(search);
  const parts = (path || "/").split("/").filter(Boolean).map(decodeURIComponent);
  if (parts[0] !== "alerts") {
    stream?.close();
    stream = undefined;
  }
  try {
    if (parts[0] === "service" && parts[1]) await servicePage(parts[1], params);
    else if (parts[0] === "trace" && parts[1]) await tracePage(parts[1]);
    else if (parts[0] === "alerts") await alertsPage(params);
    else if (parts[0] === "pipeline") await pipelinePage();
    else await fleetPage();
    document.body.dataset.page = parts[0] ?? "fleet";
    document.body.dataset.ready = "true";
  } catch (error) {
    showError(error);
  }
}

window.addEventListener("hashchange", () => {
  document.body.dataset.ready = "false";
  void route();
});
void route();
