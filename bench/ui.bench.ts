/**
 * Web UI benchmark: `npm run bench:ui` (needs PostgreSQL only). A fresh database gets
 * BENCH_UI_SERVICES services (default 50) × BENCH_UI_DAYS days (default 7) of 1-minute windows
 * (service totals and two models each), generated in SQL; then it times the UI's API over HTTP:
 * the fleet page, and one service's page over a day in 5-minute buckets and over the whole range
 * in 1-hour buckets. Each query is run BENCH_UI_RUNS times (default 5); the median is printed.
 * With Chromium at /usr/bin/chromium it also times the pages in the browser: from navigation to
 * drawn (every chart and every sparkline in view).
 */
import { existsSync } from "node:fs";
import { performance } from "node:perf_hooks";

import pg from "pg";
import { chromium } from "playwright-core";

import { loadConnectionConfig } from "../config/index.js";
import { migrate } from "../sink/migrate.js";
import { UiServer } from "../ui/server.js";
import { runBench } from "./run.js";

const SERVICES = Number(process.env.BENCH_UI_SERVICES ?? 50);
const DAYS = Number(process.env.BENCH_UI_DAYS ?? 7);
const RUNS = Number(process.env.BENCH_UI_RUNS ?? 5);

/** Rows of one scope: every service × minute, with counts that vary and a small sketch. */
function fill(scope: "service" | "model", model: string, share: number): string {
  return `insert into metric_rollups (
      service, scope, model, window_start, window_end, low_confidence_threshold, prompt_diff_threshold,
      calls, calls_with_cost, cost_nano_usd, prompt_tokens, completion_tokens, calls_tokens_reported,
      calls_tokens_estimated, calls_tokens_none, fallbacks, calls_with_retries, retries, low_confidence,
      calls_with_confidence, gate_blocks, calls_with_gate, prompt_diff_violations, calls_with_prompt_diff,
      shadow_disagreements, calls_with_shadow, deterministic_fallbacks, high_risk, golden_failures,
      golden_with_result, errors, late, latency_sketch, latency_p50_ms, latency_p95_ms, latency_p99_ms)
    select 'svc-' || lpad(s::text, 3, '0'), '${scope}', '${model}', t, t + interval '1 minute', 0.7, 0.3,
           c, c, c * 2000000, c * 700, c * 200, c, 0, 0, c / 50, c / 30, c / 30, c / 10,
           c, c / 12, c, c / 40, c / 2, c / 100, c / 4, c / 200, c / 7, 0, c / 12, c / 150, 0,
           jsonb_build_object('relative_accuracy', 0.01, 'zero_count', 0,
             'keys', jsonb_build_array(600 + (s % 40), 700 + (m % 30), 780),
             'counts', jsonb_build_array(c - c / 10 - 1, c / 10, 1), 'min_ms', 300, 'max_ms', 9000),
           900, 2500, 6000
      from generate_series(1, ${SERVICES}) s,
           generate_series(now() - interval '${DAYS} days', now(), interval '1 minute') with ordinality g(t, m),
           lateral (select greatest(3, ((60 + 40 * sin(m / 90.0) + (s % 7) * 5) * ${share})::int) as c) counts`;
}

async function median(label: string, url: string): Promise<number> {
  const times: number[] = [];
  let bytes = 0;
  for (let i = 0; i < RUNS; i++) {
    const started = performance.now();
    const response = await fetch(url);
    const body = await response.text();
    if (!response.ok) throw new Error(`${label}: HTTP ${response.status} ${body}`);
    bytes = body.length;
    times.push(performance.now() - started);
  }
  times.sort((a, b) => a - b);
  const middle = times[Math.floor(times.length / 2)] ?? 0;
  process.stdout.write(
    `${label.padEnd(44)} median ${middle.toFixed(0).padStart(6)} ms  (min ${(times[0] ?? 0).toFixed(0)}, max ${(times.at(-1) ?? 0).toFixed(0)}; ${(bytes / 1024).toFixed(0)} KiB)\n`,
  );
  return middle;
}

const CHROMIUM = "/usr/bin/chromium";

/** Each page's time from navigation to drawn, in Chromium, the median of RUNS. */
async function pages(base: string, hashes: readonly [string, string][]): Promise<void> {
  if (!existsSync(CHROMIUM)) {
    process.stdout.write(`pages in the browser: skipped (no Chromium at ${CHROMIUM})\n`);
    return;
  }
  const browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run"],
  });
  try {
    const page = await browser.newPage({ viewport: { width: 1400, height: 900 } });
    for (const [label, hash] of hashes) {
      const times: number[] = [];
      for (let i = 0; i < RUNS; i++) {
        // A full load each time: from a blank page, not a hash change.
        await page.goto("about:blank");
        const started = performance.now();
        await page.goto(`${base}${hash}`);
        await page.waitForSelector("body[data-ready='true']");
        // Drawn: uPlot made every canvas the page wants in view.
        await page.waitForFunction(
          "[...document.querySelectorAll('.plot, .spark')].filter((e) => { const r = e.getBoundingClientRect(); return r.top < innerHeight && r.bottom > 0; }).every((e) => e.querySelector('canvas'))",
        );
        times.push(performance.now() - started);
      }
      times.sort((a, b) => a - b);
      process.stdout.write(
        `${label.padEnd(44)} median ${(times[Math.floor(times.length / 2)] ?? 0).toFixed(0).padStart(6)} ms  (navigation to drawn, Chromium)\n`,
      );
    }
  } finally {
    await browser.close();
  }
}

async function main(): Promise<void> {
  const base = new URL(loadConnectionConfig().databaseUrl);
  const name = `mcpo_bench_ui_${process.pid}`;
  base.pathname = "/postgres";
  const admin = new pg.Client({ connectionString: base.toString() });
  await admin.connect();
  await admin.query(`create database ${name}`);
  const url = new URL(base.toString());
  url.pathname = `/${name}`;
  let server: UiServer | undefined;
  try {
    await migrate(url.toString());
    const client = new pg.Client({ connectionString: url.toString() });
    await client.connect();
    const started = performance.now();
    await client.query(fill("service", "", 1));
    await client.query(fill("model", "gpt-4o", 0.6));
    await client.query(fill("model", "gpt-4o-mini", 0.4));
    await client.query("analyze metric_rollups");
    const rows = await client.query<{ n: string }>(
      "select count(*)::text as n from metric_rollups",
    );
    await client.end();
    process.stdout.write(
      `${SERVICES} services × ${DAYS} days of 1-minute windows: ${Number(rows.rows[0]?.n).toLocaleString("en-US")} rollup rows in ${((performance.now() - started) / 1000).toFixed(1)} s\n`,
    );
    server = new UiServer({ databaseUrl: url.toString(), port: 0, liveAlerts: false });
    await server.start();
    const api = `${server.url}api`;
    await median("GET /api/fleet (last hour, every service)", `${api}/fleet`);
    await median(
      "GET /api/service (1 day, 5 m buckets)",
      `${api}/service/svc-001?range=24h&bucket=5m`,
    );
    await median(
      `GET /api/service (${DAYS} days, 1 h buckets)`,
      `${api}/service/svc-001?range=${DAYS}d&bucket=1h`,
    );
    await pages(server.url, [
      ["page: fleet", "#/"],
      ["page: service, 1 day in 5 m buckets", "#/service/svc-001?range=24h&bucket=5m"],
      [`page: service, ${DAYS} days in 1 h buckets`, `#/service/svc-001?range=${DAYS}d&bucket=1h`],
    ]);
  } finally {
    await server?.stop();
    await admin.query(`drop database if exists ${name} with (force)`);
    await admin.end();
  }
}

runBench(main, "PostgreSQL at DATABASE_URL");
