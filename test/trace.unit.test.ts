import { describe, expect, it } from "vitest";
import { spanEndMs, wallClockMs } from "../producer/clock.js";

import {
  currentTraceContext,
  extractMcpParent,
  formatTraceparent,
  injectMcpTraceparent,
  parseTraceparent,
  runWithTraceContext,
  startSpanContext,
} from "../producer/trace.js";

describe("W3C traceparent", () => {
  it("parses the specification's example and formats it back", () => {
    const header = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    const parent = parseTraceparent(header);
    expect(parent).toEqual({
      traceId: "4bf92f3577b34da6a3ce929d0e0e4736",
      spanId: "00f067aa0ba902b7",
      sampled: true,
    });
    expect(formatTraceparent(parent ?? startSpanContext())).toBe(header);
    expect(
      parseTraceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00")?.sampled,
    ).toBe(false);
  });

  it.each([
    ["", "empty"],
    ["00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7", "missing flags"],
    ["00-00000000000000000000000000000000-00f067aa0ba902b7-01", "all-zero trace id"],
    ["00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01", "all-zero span id"],
    ["00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01", "upper case"],
    ["ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", "version ff"],
    ["00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra", "extra field in version 00"],
    ["00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01", "short trace id"],
  ])("rejects %j (%s)", (header) => {
    expect(parseTraceparent(header)).toBeUndefined();
  });

  it("accepts a later version with extra fields, ignoring them", () => {
    expect(
      parseTraceparent("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what-ever")
        ?.traceId,
    ).toBe("4bf92f3577b34da6a3ce929d0e0e4736");
  });
});

describe("context propagation", () => {
  it("follows async code, and children take the current span as parent", async () => {
    // Some assertions run inside callbacks: all of them must have run.
    expect.assertions(8);
    const root = startSpanContext(undefined);
    expect(root.parentSpanId).toBeNull();
    expect(root.traceId).toMatch(/^[0-9a-f]{32}$/);
    expect(root.spanId).toMatch(/^[0-9a-f]{16}$/);
    await runWithTraceContext(root, async () => {
      await new Promise((resolve) => setTimeout(resolve, 5));
      expect(currentTraceContext()).toBe(root);
      const child = startSpanContext();
      expect(child).toMatchObject({ traceId: root.traceId, parentSpanId: root.spanId });
      await Promise.all(
        [1, 2].map(async () => {
          await Promise.resolve();
          expect(currentTraceContext()?.spanId).toBe(root.spanId);
        }),
      );
    });
    expect(currentTraceContext()).toBeUndefined();
  });

  it("carries a traceparent in MCP params._meta, keeping other _meta keys", () => {
    const span = startSpanContext(undefined);
    const params = injectMcpTraceparent({ name: "t", _meta: { progressToken: 7 } }, span);
    expect(params._meta).toEqual({ progressToken: 7, traceparent: formatTraceparent(span) });
    expect(extractMcpParent(params)).toEqual({
      traceId: span.traceId,
      spanId: span.spanId,
      sampled: true,
    });
    expect(extractMcpParent({ _meta: { traceparent: "junk" } })).toBeUndefined();
    expect(extractMcpParent(undefined)).toBeUndefined();
  });

  it("makes distinct ids", () => {
    const ids = new Set(Array.from({ length: 10_000 }, () => startSpanContext(undefined).spanId));
    expect(ids.size).toBe(10_000);
  });
});

describe("span clock", () => {
  it("has sub-millisecond resolution, never goes back, and stays with the system clock", () => {
    let previous = wallClockMs();
    let fractional = 0;
    // Checked in the loop, asserted after it (80 000 expect calls took seconds on a loaded box).
    const wrong: string[] = [];
    for (let i = 0; i < 20_000; i++) {
      const before = Date.now();
      const now = wallClockMs();
      const after = Date.now();
      if (now < previous) wrong.push(`${now} went back from ${previous}`);
      if (now < before - 1) wrong.push(`${now} before the system clock's ${before}`);
      if (now >= after + 2) wrong.push(`${now} after the system clock's ${after}`);
      if (!Number.isInteger(now)) fractional++;
      previous = now;
    }
    expect(wrong.slice(0, 5)).toEqual([]);
    expect(fractional).toBeGreaterThan(10_000);
  });
});

describe("span ends", () => {
  it("keep a span enclosing a span started inside it when the clock steps forward meanwhile", () => {
    // A span clock that runs with the monotonic clock, and re-anchors forward by 8.9 ms (a loaded
    // VM's monotonic clock fell behind the system clock): a model call started inside a tool
    // call after the step reads the stepped clock.
    const origin = 1_764_000_000_000;
    let step = 0;
    const now = (): number => origin + performance.now() + step;
    const toolStart = now();
    const toolStartedPerf = performance.now();
    step += 8.9;
    const modelStart = now();
    const modelStartedPerf = performance.now();
    const modelEnd = spanEndMs(modelStart, modelStartedPerf, now);
    const toolEnd = spanEndMs(toolStart, toolStartedPerf, now);
    expect(toolStart).toBeLessThanOrEqual(modelStart);
    expect(toolEnd).toBeGreaterThanOrEqual(modelEnd);
    // A clock that does not move (a test's fixed clock): the end is the start plus the duration.
    const fixed = (): number => origin;
    const started = performance.now() - 5;
    expect(spanEndMs(origin, started, fixed)).toBeGreaterThanOrEqual(origin + 5);
  });
});
