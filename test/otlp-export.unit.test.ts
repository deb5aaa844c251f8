/**
 * The OTLP exporter's pure parts: its target from the options and the OpenTelemetry variables
 * (the spec's endpoint rule, headers, compression, timeout; flags win), the request chunking, and
 * the shared HTTP delivery's Retry-After as the least wait of the project's retry loop.
 */
import { describe, expect, it } from "vitest";

import { SettingsResolver } from "../cli/config.js";
import {
  ConfigError,
  ObservatoryError,
  otlpExportConfigSchema,
  parseOtlpExportConfig,
  redactSecrets,
  requestedDelayMs,
  retry,
} from "../config/index.js";
import { DeliveryError, retryAfterMs } from "../ops/http-destination.js";
import { chunkEvents, otlpTargetOf, parseOtlpHeaders, tracesUrl } from "../otlp/export.js";
import { encodeTraceRequest } from "../otlp/wire.js";
import { exportRequestOf } from "../otlp/semconv.js";
import { sampleEvent } from "./support/events.js";

const NONE = {
  endpoint: undefined,
  headers: undefined,
  compression: undefined,
  timeoutMs: undefined,
} as const;

describe("the export target", () => {
  it("the traces variable is used as is, the generic one gets /v1/traces, a flag wins over both", () => {
    expect(
      otlpTargetOf(NONE, { OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: "http://c:4318/custom/path" }).url,
    ).toBe("http://c:4318/custom/path");
    expect(otlpTargetOf(NONE, { OTEL_EXPORTER_OTLP_ENDPOINT: "http://c:4318" }).url).toBe(
      "http://c:4318/v1/traces",
    );
    expect(otlpTargetOf(NONE, { OTEL_EXPORTER_OTLP_ENDPOINT: "https://c/otlp/" }).url).toBe(
      "https://c/otlp/v1/traces",
    );
    expect(
      otlpTargetOf(NONE, {
        OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: "http://traces:4318/x",
        OTEL_EXPORTER_OTLP_ENDPOINT: "http://generic:4318",
      }).url,
    ).toBe("http://traces:4318/x");
    expect(
      otlpTargetOf(
        { ...NONE, endpoint: "http://flag:4318" },
        { OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: "http://traces:4318/x" },
      ).url,
    ).toBe("http://flag:4318/v1/traces");
    expect(tracesUrl("http://flag:4318/v1/traces/")).toBe("http://flag:4318/v1/traces");
  });

  it("no endpoint anywhere, or a bad one, stops with a message naming the setting", () => {
    expect(() => otlpTargetOf(NONE, {})).toThrow(
      /invalid configuration endpoint: give the OTLP endpoint/,
    );
    expect(() => otlpTargetOf(NONE, { OTEL_EXPORTER_OTLP_ENDPOINT: "ftp://x" })).toThrow(
      /OTEL_EXPORTER_OTLP_ENDPOINT: expected an http\(s\) URL/,
    );
    expect(() => parseOtlpExportConfig({ endpoint: "not a url" })).toThrow(ConfigError);
  });

  it("headers: k=v,k2=v2 with URL-encoded values; traces-specific first; values are secrets, never in messages", () => {
    const target = otlpTargetOf(
      { ...NONE, endpoint: "http://c:4318" },
      {
        OTEL_EXPORTER_OTLP_HEADERS: "x-generic=1",
        OTEL_EXPORTER_OTLP_TRACES_HEADERS:
          " Authorization=Bearer%20tok-unit-secret-123 , x-scope-orgid=tenant%2C1 ,",
      },
    );
    expect(target.headers).toEqual({
      authorization: "Bearer tok-unit-secret-123",
      "x-scope-orgid": "tenant,1",
    });
    expect(redactSecrets("sent Bearer tok-unit-secret-123")).not.toContain("tok-unit-secret-123");
    const bad = (): unknown =>
      parseOtlpHeaders("a=1,novalue-secret-xyz", "OTEL_EXPORTER_OTLP_HEADERS");
    expect(bad).toThrow(/OTEL_EXPORTER_OTLP_HEADERS: entry 2 is not name=value/);
    expect(bad).not.toThrow(/secret-xyz/);
    expect(() => parseOtlpHeaders("a=%E0%A4%A", "H")).toThrow(/the value of a is not URL-encoded/);
  });

  it("compression and timeout: option, then traces variable, then generic, then none / 10 s", () => {
    const base = { ...NONE, endpoint: "http://c:4318" };
    expect(otlpTargetOf(base, {})).toMatchObject({ compression: "none", timeoutMs: 10_000 });
    expect(
      otlpTargetOf(base, {
        OTEL_EXPORTER_OTLP_COMPRESSION: "gzip",
        OTEL_EXPORTER_OTLP_TIMEOUT: "2500",
      }),
    ).toMatchObject({ compression: "gzip", timeoutMs: 2500 });
    expect(
      otlpTargetOf(
        { ...base, compression: "none", timeoutMs: 700 },
        { OTEL_EXPORTER_OTLP_TRACES_COMPRESSION: "gzip", OTEL_EXPORTER_OTLP_TRACES_TIMEOUT: "9" },
      ),
    ).toMatchObject({ compression: "none", timeoutMs: 700 });
    expect(() => otlpTargetOf(base, { OTEL_EXPORTER_OTLP_COMPRESSION: "zstd" })).toThrow(
      /OTEL_EXPORTER_OTLP_COMPRESSION: expected gzip or none/,
    );
    expect(() => otlpTargetOf(base, { OTEL_EXPORTER_OTLP_TIMEOUT: "10s" })).toThrow(
      /OTEL_EXPORTER_OTLP_TIMEOUT: expected a positive integer, milliseconds/,
    );
  });

  it("through the CLI's settings, a timeout nobody gives is unset (not NaN), so the OpenTelemetry variable applies", () => {
    const options = new SettingsResolver({}, undefined, {}).options(otlpExportConfigSchema);
    expect(options.timeoutMs).toBeUndefined();
    expect(
      otlpTargetOf(
        { ...NONE, ...options, endpoint: "http://c:4318" },
        { OTEL_EXPORTER_OTLP_TIMEOUT: "2500" },
      ).timeoutMs,
    ).toBe(2500);
    expect(
      new SettingsResolver({}, undefined, { MCPO_OTLP_TIMEOUT_MS: "3s" }).options(
        otlpExportConfigSchema,
      ).timeoutMs,
    ).toBe(3000);
  });

  it("the group defaults to the prefix's stem and -otlp-export", () => {
    expect(parseOtlpExportConfig({ topicPrefix: "acme." }).groupId).toBe("acme-otlp-export");
    expect(parseOtlpExportConfig({}).maxSpansPerRequest).toBe(512);
  });
});

describe("requests", () => {
  const items = Array.from({ length: 7 }, (_, i) => ({
    event: sampleEvent({ span_id: `00000000000000${(i + 1).toString(16).padStart(2, "0")}` }),
  }));

  it("at most maxSpans per request, in order", () => {
    const chunks = chunkEvents(items, 3, Number.MAX_SAFE_INTEGER);
    expect(chunks.map((c) => c.length)).toEqual([3, 3, 1]);
    expect(chunks.flat()).toEqual(items);
  });

  it("about maxBytes per request; a single span over the limit goes alone", () => {
    const one = encodeTraceRequest(exportRequestOf([items[0]?.event ?? sampleEvent()])).length;
    const chunks = chunkEvents(items, 100, one * 2 + 1);
    expect(chunks.map((c) => c.length)).toEqual([2, 2, 2, 1]);
    for (const chunk of chunks)
      expect(
        encodeTraceRequest(exportRequestOf(chunk.map((c) => c.event))).length,
      ).toBeLessThanOrEqual(one * 2 + 1);
    expect(chunkEvents(items, 100, 1).map((c) => c.length)).toEqual([1, 1, 1, 1, 1, 1, 1]);
  });
});

describe("Retry-After", () => {
  it("delay-seconds or an HTTP date, as ms; anything else undefined", () => {
    const now = Date.parse("2026-12-06T07:00:00Z");
    expect(retryAfterMs("3", now)).toBe(3000);
    expect(retryAfterMs(" 0 ", now)).toBe(0);
    expect(retryAfterMs("Sun, 06 Dec 2026 07:00:05 GMT", now)).toBe(5000);
    expect(retryAfterMs("Sun, 06 Dec 2026 06:00:00 GMT", now)).toBe(0);
    expect(retryAfterMs("soon", now)).toBeUndefined();
    expect(retryAfterMs(null, now)).toBeUndefined();
  });

  it("the retry loop waits at least the error's Retry-After, capped at its longest wait", async () => {
    const delays: number[] = [];
    let attempts = 0;
    const asked = [4000, 60_000, undefined];
    const result = await retry(
      () => {
        attempts++;
        if (attempts <= asked.length)
          return Promise.reject(
            new DeliveryError(
              "FORWARD_HTTP_STATUS",
              "HTTP 503",
              503,
              true,
              undefined,
              asked[attempts - 1],
            ),
          );
        return Promise.resolve("done");
      },
      { maxAttempts: 10, baseDelayMs: 100, maxDelayMs: 30_000 },
      {
        random: () => 0.5,
        sleep: (ms) => {
          delays.push(ms);
          return Promise.resolve();
        },
      },
    );
    expect(result).toBe("done");
    // 4 s asked (over the jittered 50 ms); 60 s capped at 30 s; none asked: the jitter (0.5 · 400).
    expect(delays).toEqual([4000, 30_000, 200]);
    expect(requestedDelayMs(new ObservatoryError("X", "x", { retriable: true }))).toBeUndefined();
    expect(requestedDelayMs({ retryAfterMs: -1 })).toBeUndefined();
  });

  it("a policy may give its own least wait", async () => {
    const delays: number[] = [];
    let attempts = 0;
    await retry(
      () =>
        ++attempts < 3
          ? Promise.reject(new ObservatoryError("X", "x", { retriable: true }))
          : Promise.resolve(),
      { maxAttempts: 5, baseDelayMs: 10, maxDelayMs: 1000, minDelayMs: () => 250 },
      { random: () => 0, sleep: (ms) => (delays.push(ms), Promise.resolve()) },
    );
    expect(delays).toEqual([250, 250]);
  });
});
