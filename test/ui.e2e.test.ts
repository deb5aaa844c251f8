/**
 * `mcp-observatory ui` in a real browser: the machine's Chromium (no browser download), driven by
 * playwright-core, against a database the demo filled. Every page loads without console errors
 * and shows the database's numbers; thresholds and incident markers are drawn; a live alert
 * transition appears without a reload; a trace nests a model call under its tool call; axe-core
 * finds no serious violation. Screenshots go to test/artifacts/ (not committed).
 */
import { existsSync, mkdirSync, readFileSync } from "node:fs";
import { join } from "node:path";

import type { Producer } from "kafkajs";
import pg from "pg";
import { chromium, type Browser, type Page } from "playwright-core";
import { afterAll, beforeAll, describe, expect, it } from "vitest";

import { AvroCodec, valueSubject } from "../avro/codec.js";
import { ALERT_EVENT } from "../avro/contracts.js";
import type { AlertEvent } from "../avro/generated.js";
import { topicNames } from "../config/index.js";
import { UiServer } from "../ui/server.js";
import { REPO_ROOT, startCli, type BackgroundCommand } from "./support/cli.js";
import {
  createDatabase,
  dropDatabase,
  services,
  testKafka,
  uniqueName,
  type FreshDatabase,
} from "./support/isolation.js";
import { waitFor } from "./support/wait.js";

const CHROMIUM = "/usr/bin/chromium";
const NO_BROWSER = existsSync(CHROMIUM)
  ? undefined
  : `no Chromium at ${CHROMIUM} (install Debian's chromium package to run the browser tests)`;
if (NO_BROWSER) process.stderr.write(`[ui] skipped: ${NO_BROWSER}\n`);

const ARTIFACTS = join(REPO_ROOT, "test", "artifacts");
const SERVICES = ["payments-mcp", "search-mcp", "support-mcp"];
const AXE_SOURCE = readFileSync(join(REPO_ROOT, "node_modules/axe-core/axe.min.js"), "utf8");

describe.skipIf(NO_BROWSER !== undefined)("mcp-observatory ui in Chromium", () => {
  let database: FreshDatabase | undefined;
  let prefix = "";
  let client: pg.Client | undefined;
  let demo: BackgroundCommand | undefined;
  let ui: BackgroundCommand | undefined;
  /** The demo's UI (fleet, service and trace pages) and the `ui` command's (alerts page). */
  let demoBase = "";
  let base = "";
  let browser: Browser | undefined;
  let page: Page;
  const consoleErrors: string[] = [];
  const db = (): pg.Client => {
    if (!client) throw new Error("the database is not connected");
    return client;
  };

  beforeAll(async () => {
    mkdirSync(ARTIFACTS, { recursive: true });
    database = await createDatabase("mcpo_ui");
    prefix = `${uniqueName("ui")}.`;
    const env = {
      ...process.env,
      KAFKA_BROKERS: services().kafkaBrokers,
      SCHEMA_REGISTRY_URL: services().schemaRegistryUrl,
      DATABASE_URL: database.url,
      MCPO_TOPIC_PREFIX: prefix,
      MCPO_PROCESSOR_GROUP: `${prefix}processor`,
      MCPO_SINK_GROUP: `${prefix}sink`,
    };
    // The demo fills the database, then (--ui) serves the web UI over it until SIGTERM.
    const running = startCli(
      [
        "demo",
        "--duration",
        "10s",
        "--rate",
        "200",
        "--services",
        "3",
        "--replicas",
        "1",
        "--json",
        "--ui",
      ],
      { ...env, MCPO_UI_PORT: "0" },
    );
    demo = running;
    demoBase = await addressOf(running, "stderr", 150_000);
    const connection = new pg.Client({ connectionString: database.url });
    await connection.connect();
    client = connection;
    // And `mcp-observatory ui` on its own.
    const command = startCli(["ui", "--port", "0"], env);
    ui = command;
    base = await addressOf(command, "stdout", 30_000);
    browser = await chromium.launch({
      executablePath: CHROMIUM,
      args: [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
      ],
    });
    page = await browser.newPage({ viewport: { width: 1400, height: 900 } });
    page.on("console", (message) => {
      if (message.type() === "error") consoleErrors.push(message.text());
    });
    page.on("pageerror", (error) => consoleErrors.push(error.message));
  }, 150_000);

  afterAll(async () => {
    await browser?.close();
    await ui?.stop();
    await demo?.stop();
    await client?.end().catch(() => undefined);
    if (database) await dropDatabase(database).catch(() => undefined);
    if (prefix === "") return;
    const admin = testKafka().admin();
    await admin.connect();
    const topics = (await admin.listTopics()).filter((topic) => topic.startsWith(prefix));
    if (topics.length > 0) await admin.deleteTopics({ topics }).catch(() => undefined);
    // The UIs' own alert groups (mcpo-ui-<random>), once their members left.
    const { groups } = await admin.listGroups();
    const left = groups.map((g) => g.groupId).filter((id) => id.startsWith("mcpo-ui-"));
    const described = left.length > 0 ? (await admin.describeGroups(left)).groups : [];
    const empty = described.filter((g) => g.state === "Empty").map((g) => g.groupId);
    if (empty.length > 0) await admin.deleteGroups(empty).catch(() => undefined);
    await admin.deleteGroups([`${prefix}processor`, `${prefix}sink`]).catch(() => undefined);
    await admin.disconnect();
    const registry = services().schemaRegistryUrl;
    const subjects = (await (await fetch(`${registry}/subjects`)).json()) as string[];
    for (const subject of subjects.filter((name) => name.startsWith(prefix)))
      for (const query of ["", "?permanent=true"])
        await fetch(`${registry}/subjects/${encodeURIComponent(subject)}${query}`, {
          method: "DELETE",
        }).catch(() => undefined);
  });

  async function open(hash: string, at = demoBase): Promise<void> {
    consoleErrors.length = 0;
    await page.goto(`${at}/${hash}`);
    await page.waitForSelector("body[data-ready='true']", { timeout: 20_000 });
    // Charts are drawn on the next frame.
    await page.waitForTimeout(300);
  }

  async function seriousViolations(): Promise<string[]> {
    // Evaluated, not a <script>: the pages' Content-Security-Policy allows no inline script.
    await page.evaluate(AXE_SOURCE);
    const found = await page.evaluate<{ id: string; impact: string | null; nodes: number }[]>(
      "axe.run().then((r) => r.violations.map((v) => ({ id: v.id, impact: v.impact, nodes: v.nodes.length })))",
    );
    return found
      .filter((v) => v.impact === "serious" || v.impact === "critical")
      .map((v) => `${v.id} (${v.impact ?? ""}, ${v.nodes} nodes)`);
  }

  /** Each matching element's attributes (and text), read through locators. */
  async function attributes(
    selector: string,
    names: readonly string[],
  ): Promise<Record<string, string | null>[]> {
    const found = page.locator(selector);
    const out: Record<string, string | null>[] = [];
    for (let i = 0, n = await found.count(); i < n; i++) {
      const element = found.nth(i);
      const row: Record<string, string | null> = { text: await element.textContent() };
      for (const name of names) row[name] = await element.getAttribute(name);
      out.push(row);
    }
    return out;
  }

  const cell = async (selector: string) =>
    (await attributes(selector, ["data-value", "data-breach"])).map((row) => ({
      value: row["data-value"] ?? "",
      text: row.text,
      breach: row["data-breach"] ?? null,
    }));

  const ids = async (selector: string, name: string) =>
    (await attributes(selector, [name])).map((row) => row[name] ?? "");

  it("fleet: every service's newest window as stored, breaching values marked by their rule, the firing incidents on top; no console error, no serious axe violation", async () => {
    await open("#/");
    const latest = await db().query<{
      service: string;
      calls: string;
      error_rate: number | null;
      low_confidence_rate: number | null;
    }>(
      `select distinct on (service) service, calls::text, error_rate, low_confidence_rate
         from metric_rollups where scope = 'service' order by service, window_start desc`,
    );
    expect(latest.rows.map((r) => r.service)).toEqual(SERVICES);
    for (const row of latest.rows) {
      const prefixSel = `tr[data-service="${row.service}"]`;
      const [calls] = await cell(`${prefixSel} td[data-metric="calls"]`);
      expect(Number(calls?.value), row.service).toBe(Number(row.calls));
      expect(calls?.text).toBe(Number(row.calls).toLocaleString("en-US"));
      const [errorRate] = await cell(`${prefixSel} td[data-metric="error_rate"]`);
      expect(errorRate?.value === "" ? null : Number(errorRate?.value)).toBe(row.error_rate);
      const [low] = await cell(`${prefixSel} td[data-metric="low_confidence_rate"]`);
      expect(low?.value === "" ? null : Number(low?.value)).toBe(row.low_confidence_rate);
      // low_confidence_rate_high: > 0.25 from one sample on.
      expect(low?.breach ?? null).toBe(
        row.low_confidence_rate !== null && row.low_confidence_rate > 0.25
          ? "low_confidence_rate_high"
          : null,
      );
    }
    // Each sparkline is a uPlot canvas.
    expect(await page.locator("#fleet .spark canvas").count()).toBeGreaterThanOrEqual(
      SERVICES.length * 10,
    );
    const firing = await db().query<{ alert_id: string }>(
      "select alert_id from alerts where state = 'firing' order by alert_id",
    );
    const shown = await ids(".firing tr[data-alert-id]", "data-alert-id");
    expect(shown.sort()).toEqual(firing.rows.map((r) => r.alert_id));
    if (firing.rows.length === 0) expect(await page.locator("#no-firing").count()).toBe(1);
    await page.screenshot({ path: join(ARTIFACTS, "ui-fleet.png"), fullPage: true });
    expect(consoleErrors).toEqual([]);
    expect(await seriousViolations()).toEqual([]);
  });

  it("service: totals and per-model numbers equal the database's; each rule's threshold is drawn on its chart and each incident marked where it fired and resolved", async () => {
    const service = "payments-mcp";
    await open(`#/service/${service}?range=1h&bucket=10s`);
    const { rows } = await db().query<{ calls: string; cost: number; to: Date }>(
      `select sum(calls)::text as calls, sum(cost_nano_usd)::float8 / 1e9 as cost, max(window_end) as to
         from metric_rollups
        where scope = 'service' and service = $1
          and window_start >= (select max(window_end) from metric_rollups where scope = 'service' and service = $1) - interval '1 hour'`,
      [service],
    );
    const [calls] = await cell('#totals dd[data-metric="calls"]');
    expect(Number(calls?.value)).toBe(Number(rows[0]?.calls));
    const [cost] = await cell('#totals dd[data-metric="cost_usd"]');
    expect(Number(cost?.value)).toBeCloseTo(rows[0]?.cost ?? -1, 6);

    const models = await db().query<{ model: string; calls: string }>(
      `select model, sum(calls)::text as calls from metric_rollups
        where scope = 'model' and service = $1 group by model order by model`,
      [service],
    );
    for (const model of models.rows) {
      const [shown] = await cell(`tr[data-model="${model.model}"] td[data-metric="calls"]`);
      expect(Number(shown?.value), model.model).toBe(Number(model.calls));
    }

    // Thresholds: every rate rule's line, on its chart.
    const charts = await ids("[data-chart]", "data-chart");
    const thresholds: { chart: string; rule: string | null; value: number }[] = [];
    const marked: { chart: string; id: string | null; fired: number; resolved: string | null }[] =
      [];
    for (const chart of charts) {
      for (const li of await attributes(`[data-chart="${chart}"] li[data-threshold]`, [
        "data-threshold",
        "data-value",
      ]))
        thresholds.push({
          chart,
          rule: li["data-threshold"] ?? null,
          value: Number(li["data-value"]),
        });
      for (const li of await attributes(`[data-chart="${chart}"] li[data-incident]`, [
        "data-incident",
        "data-fired",
        "data-resolved",
      ]))
        marked.push({
          chart,
          id: li["data-incident"] ?? null,
          fired: Number(li["data-fired"]),
          resolved: li["data-resolved"] ?? null,
        });
    }
    expect(thresholds).toContainEqual({
      chart: "low_confidence_rate",
      rule: "low_confidence_rate_high",
      value: 0.25,
    });
    expect(thresholds).toContainEqual({
      chart: "latency_ms",
      rule: "latency_p95_high",
      value: 30_000,
    });
    // Incidents: every one of the service's, on the chart of its metric, with its times.
    const incidents = await db().query<{
      alert_id: string;
      metric: string;
      fired: Date;
      state: string;
      window_end: Date;
    }>(
      `select alert_id, metric, fired_window_start as fired, state, window_end from alerts
        where service = $1 order by alert_id`,
      [service],
    );
    expect(incidents.rows.length, "the drifting service's incidents").toBeGreaterThan(0);
    const expected = incidents.rows.map((r) => ({
      chart: r.metric === "latency_p95_ms" ? "latency_ms" : r.metric,
      id: r.alert_id,
      fired: r.fired.getTime(),
      resolved: r.state === "resolved" ? String(r.window_end.getTime()) : "",
    }));
    expect(marked.sort((a, b) => (a.id ?? "").localeCompare(b.id ?? ""))).toEqual(expected);
    expect(await page.locator("[data-chart] canvas").count()).toBeGreaterThanOrEqual(13);
    await page.screenshot({ path: join(ARTIFACTS, "ui-service.png"), fullPage: true });
    // The first screenful, as README shows it (docs/ui-service.png).
    await page.screenshot({ path: join(ARTIFACTS, "ui-service-top.png") });
    expect(consoleErrors).toEqual([]);
    expect(await seriousViolations()).toEqual([]);
  });

  it("trace: opened from the service page's recent calls, the span tree nests a model call under its tool call, each with its duration bar", async () => {
    const nested = await db().query<{ trace_id: string; tool: string; model: string }>(
      `select t.trace_id, t.span_id as tool, m.span_id as model
         from spans t join spans m on m.parent_span_id = t.span_id and m.trace_id = t.trace_id
        where t.kind = 'tool_call' and m.kind = 'model_call' and t.service = 'payments-mcp'
        order by m.duration_ms desc limit 1`,
    );
    expect(nested.rows.length, "a tool call with a model call under it").toBe(1);
    const trace = nested.rows[0] as { trace_id: string; tool: string; model: string };
    // The service page links its recent calls' traces.
    await open("#/service/payments-mcp?range=1h");
    const links = await ids("#recent a[href^='#/trace/']", "href");
    expect(links.length).toBeGreaterThan(0);
    await page.click("#recent a[href^='#/trace/']");
    await page.waitForSelector("#trace li[data-span-id]");
    expect(page.url()).toContain(links[0] ?? "none");

    await open(`#/trace/${trace.trace_id}`);
    const child = page.locator(
      `#trace li[data-span-id="${trace.tool}"][data-kind="tool_call"] > ul > li[data-span-id="${trace.model}"][data-kind="model_call"]`,
    );
    expect(await child.count()).toBe(1);
    expect(await page.locator("#trace .bar").count()).toBe(2);
    // A span id opens its trace too.
    await open(`#/trace/${trace.model}`);
    expect(await page.locator(`#trace li[data-span-id="${trace.tool}"]`).count()).toBe(1);
    await page.screenshot({ path: join(ARTIFACTS, "ui-trace.png"), fullPage: true });
    expect(consoleErrors).toEqual([]);
    expect(await seriousViolations()).toEqual([]);
  });

  it("alerts: every incident, filters by state, and a transition published on the alerts topic appears without a reload", async () => {
    await open("#/alerts", base);
    const all = await db().query<{ alert_id: string; state: string }>(
      "select alert_id, state from alerts order by alert_id",
    );
    const listed = await ids("table tr[data-alert-id]", "data-alert-id");
    expect(listed.sort()).toEqual(all.rows.map((r) => r.alert_id));
    await page.selectOption("#filter-state", "resolved");
    await page.waitForSelector("body[data-ready='true']");
    await page.waitForFunction(() =>
      (globalThis as unknown as { location: { hash: string } }).location.hash.includes(
        "state=resolved",
      ),
    );
    await page.waitForSelector("body[data-ready='true']");
    const states = await ids("table tr[data-alert-id]", "data-state");
    expect(states.length).toBe(all.rows.filter((r) => r.state === "resolved").length);
    expect(new Set(states)).toEqual(new Set(["resolved"]));

    await open("#/alerts", base);
    const topic = topicNames(prefix).alerts;
    const codec = await AvroCodec.register(ALERT_EVENT, {
      registryUrl: services().schemaRegistryUrl,
      subject: valueSubject(topic),
    });
    const producer: Producer = testKafka().producer();
    await producer.connect();
    try {
      // The UI's consumer starts at the topic's end once it joined: send until one shows.
      let n = 0;
      const sent: string[] = [];
      const shown = await waitFor(
        "a live transition on the alerts page",
        async () => {
          const alert = liveAlert(n++);
          sent.push(alert.alert_id);
          await producer.send({
            topic,
            messages: [{ key: alert.service, value: codec.encode(alert) }],
          });
          return ids("#live li[data-alert-id]", "data-alert-id");
        },
        (items) => items.length > 0,
        { timeoutMs: 60_000, intervalMs: 1000 },
      );
      expect(sent).toEqual(expect.arrayContaining(shown));
      expect(await page.locator("#live li").first().textContent()).toContain("live-mcp");
    } finally {
      await producer.disconnect();
    }
    await page.screenshot({ path: join(ARTIFACTS, "ui-alerts.png"), fullPage: true });
    expect(consoleErrors).toEqual([]);
    expect(await seriousViolations()).toEqual([]);
  });

  it("pipeline: the demo's processor and sink, up, with the consumer lag, late events and dead letters their /metrics endpoints report", async () => {
    await open("#/pipeline");
    const rows = await attributes("#pipeline tbody tr", ["data-url", "data-up"]);
    expect(rows.map((r) => r["data-up"])).toEqual(["true", "true"]);
    const components: string[] = [];
    for (const row of rows) {
      const url = row["data-url"] ?? "";
      const text = await (await fetch(url)).text();
      const component = /^mcpo_(processor|sink)_consumer_lag/m.exec(text)?.[1] ?? "";
      components.push(component);
      // Summed over every label set, read here from the endpoint's own text.
      const sum = (name: string) =>
        [
          ...text.matchAll(new RegExp(`^mcpo_${component}_${name}(?:\\{[^}]*\\})? (\\S+)$`, "gm")),
        ].reduce((total, match) => total + Number(match[1]), 0);
      const shown = async (metric: string) =>
        (await cell(`#pipeline tr[data-url="${url}"] td[data-metric="${metric}"]`))[0]?.value;
      expect(await shown("lag"), url).toBe(String(sum("consumer_lag")));
      // Declared by both; 0 until a record is dead-lettered.
      expect(text).toContain(`# TYPE mcpo_${component}_dead_lettered_total counter`);
      expect(await shown("deadLettered"), url).toBe(String(sum("dead_lettered_total")));
      if (component === "processor")
        expect(await shown("late"), url).toBe(String(sum("late_events_total")));
    }
    expect(components.sort()).toEqual(["processor", "sink"]);
    await page.screenshot({ path: join(ARTIFACTS, "ui-pipeline.png"), fullPage: true });
    expect(consoleErrors).toEqual([]);
    expect(await seriousViolations()).toEqual([]);
  });

  it("the demo with --ui printed its summary, served the pages above, and on SIGTERM stops everything with exit code 0; so does `ui`", async () => {
    const summary = JSON.parse(demo?.stdout().trim().split("\n").at(-1) ?? "{}") as {
      totals?: { spans?: number };
    };
    const spans = await db().query<{ n: string }>("select count(*)::text as n from spans");
    expect(summary.totals?.spans).toBe(Number(spans.rows[0]?.n));
    let started = Date.now();
    expect(await ui?.stop("SIGTERM")).toBe(0);
    process.stderr.write(`[ui] ui stopped in ${Date.now() - started} ms\n`);
    started = Date.now();
    expect(await demo?.stop("SIGTERM")).toBe(0);
    process.stderr.write(`[ui] demo --ui stopped in ${Date.now() - started} ms\n`);
    await expect(fetch(base)).rejects.toThrow();
  });
});

/** The address a process prints as `web UI: <url>`, without its trailing slash. */
async function addressOf(
  command: BackgroundCommand,
  stream: "stdout" | "stderr",
  timeoutMs: number,
): Promise<string> {
  const address = await waitFor(
    "the web UI's address",
    () => /web UI: (http:\S+)/.exec(command[stream]())?.[1],
    (url) => url !== undefined || command.exitCode() !== undefined,
    { timeoutMs, intervalMs: 100 },
  );
  expect(address, command.stderr()).toBeDefined();
  return (address ?? "").replace(/\/$/, "");
}

function liveAlert(n: number): AlertEvent {
  const windowStart = (Date.now() - 10_000) * 1000;
  return {
    alert_id: `${"f".repeat(24)}${n.toString(16).padStart(8, "0")}`,
    service: "live-mcp",
    rule: "error_rate_high",
    metric: "error_rate",
    comparator: "gt",
    state: "firing",
    observed_value: 0.25,
    threshold: 0.05,
    min_samples: 20,
    sample_count: 40,
    window_start: windowStart,
    window_end: windowStart + 5_000_000,
    fired_window_start: windowStart,
    emitted_at: windowStart + 5_000_000,
  };
}

describe("mcp-observatory ui basic authentication", () => {
  let database: FreshDatabase | undefined;
  let server: UiServer | undefined;

  beforeAll(async () => {
    database = await createDatabase("mcpo_uiauth");
    server = new UiServer({
      databaseUrl: database.url,
      port: 0,
      liveAlerts: false,
      password: "correct horse battery staple",
    });
    await server.start();
  });

  afterAll(async () => {
    await server?.stop();
    if (database) await dropDatabase(database).catch(() => undefined);
  });

  it("answers 401 with a Basic challenge without credentials or with a wrong password, and serves the pages with the right ones", async () => {
    const url = server?.url ?? "";
    const none = await fetch(url);
    expect(none.status).toBe(401);
    expect(none.headers.get("www-authenticate")).toMatch(/^Basic /);
    const auth = (secret: string) => ({
      authorization: `Basic ${Buffer.from(`observatory:${secret}`).toString("base64")}`,
    });
    expect((await fetch(`${url}api/alerts`, { headers: auth("wrong") })).status).toBe(401);
    const ok = await fetch(url, { headers: auth("correct horse battery staple") });
    expect(ok.status).toBe(200);
    expect(await ok.text()).toContain('<script type="module" src="/app.js">');
    const uplot = await fetch(`${url}vendor/uPlot.esm.js`, {
      headers: auth("correct horse battery staple"),
    });
    expect(uplot.status).toBe(200);
    expect(uplot.headers.get("content-type")).toMatch(/javascript/);
  });
});
