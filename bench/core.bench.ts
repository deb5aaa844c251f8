/**
 * Micro-benchmarks of the event contract and the metrics core: `npm run bench:core`
 * (`npm run bench:core -- bounded`: only the cost of bounded decoding).
 * Needs a schema registry (the local stack, or SCHEMA_REGISTRY_URL) for the codec's schema id;
 * the timed loops themselves do no I/O. Prints figures and their ratio to the targets.
 */
import { createHash, randomUUID } from "node:crypto";

import { AvroCodec, valueSubject } from "../avro/codec.js";
import { METRIC_ROLLUP, MODEL_CALL_EVENT, type EventContract } from "../avro/contracts.js";
import type { ModelCallEvent } from "../avro/generated.js";
import { loadConnectionConfig } from "../config/index.js";
import { merge, rollupEvents, ServiceWindows, WindowAccumulator } from "../metrics/index.js";

const TARGETS = { encode: 500_000, decode: 500_000, accumulate: 2_000_000 };

/** A typical event: ids, a model, tokens and cost, decision fields, hashes, two attributes. */
function typicalEvent(i: number): ModelCallEvent {
  const end = 1_764_000_000_000_000 + i * 1_000;
  return {
    event_id: randomUUID(),
    trace_id: randomUUID().replace(/-/g, ""),
    span_id: randomUUID().replace(/-/g, "").slice(0, 16),
    parent_span_id: i % 3 === 0 ? null : randomUUID().replace(/-/g, "").slice(0, 16),
    kind: "model_call",
    service: `svc-${i % 4}`,
    service_instance: `svc-${i % 4}-${i % 3}`,
    provider: "openai",
    model: i % 2 === 0 ? "gpt-4o" : "gpt-4o-mini",
    tool_name: null,
    mcp_method: null,
    start_time: end - 200_000 - (i % 997) * 1_000,
    end_time: end,
    prompt_tokens: 300 + (i % 500),
    completion_tokens: 50 + (i % 200),
    token_source: i % 5 === 0 ? "estimated" : "reported",
    cost_nano_usd: i % 11 === 0 ? null : 1_000_000 + i,
    retries: i % 7 === 0 ? 1 : 0,
    fallback_used: i % 13 === 0,
    confidence: (i % 100) / 100,
    confidence_gate_threshold: 0.7,
    high_risk_path: i % 4 === 0,
    deterministic_fallback_triggered: i % 8 === 0,
    prompt_diff_score: (i % 50) / 100,
    shadow_agreement: i % 6 === 0 ? false : true,
    is_golden_financial_scenario: i % 20 === 0,
    golden_scenario_passed: i % 20 === 0 ? i % 40 !== 0 : null,
    status: i % 50 === 0 ? "error" : "ok",
    error_type: i % 50 === 0 ? "RateLimitError" : null,
    prompt_size_bytes: 1_200 + (i % 300),
    response_size_bytes: 240 + (i % 100),
    prompt_sha256: createHash("sha256").update(`prompt ${i}`).digest(),
    response_sha256: createHash("sha256").update(`response ${i}`).digest(),
    prompt_text: null,
    response_text: null,
    attributes: { "mcp.session.id": "session-42", "gen_ai.response.id": `chatcmpl-${i}` },
    cache_read_tokens: null,
    cache_write_tokens: null,
    input_audio_tokens: null,
    output_audio_tokens: null,
  };
}

/** Runs `body` once to warm up, then `rounds` times, and keeps the best rate (ops/s). */
function measure(name: string, ops: number, body: () => void, rounds = 5): number {
  body();
  let best = 0;
  for (let round = 0; round < rounds; round++) {
    const start = process.hrtime.bigint();
    body();
    const seconds = Number(process.hrtime.bigint() - start) / 1e9;
    best = Math.max(best, ops / seconds);
  }
  return best;
}

async function measureAsync(ops: number, body: () => Promise<void>, rounds = 5): Promise<number> {
  await body();
  let best = 0;
  for (let round = 0; round < rounds; round++) {
    const start = process.hrtime.bigint();
    await body();
    best = Math.max(best, ops / (Number(process.hrtime.bigint() - start) / 1e9));
  }
  return best;
}

function line(name: string, value: string, target?: number, rate?: number): void {
  const ratio =
    target !== undefined && rate !== undefined
      ? `  ${(rate / target).toFixed(2)}× target ${target.toLocaleString("en")}/s`
      : "";
  process.stdout.write(`${name.padEnd(40)} ${value.padStart(18)}${ratio}\n`);
}

/**
 * Decode throughput with the bounds walk (avro/bounded.ts) on and off, in the same run: two codecs
 * of the same schema, one with `boundedDecoding: false`, timed in alternating rounds.
 */
async function boundedDecoding(registryUrl: string, subjectPrefix: string): Promise<void> {
  const events = Array.from({ length: 4_096 }, (_, i) => typicalEvent(i));
  // Rollups of many calls (sketches of many bins): 4 services × (total + 2 models) × 2 windows.
  const rollups = rollupEvents(
    events.map((event, i) => ({ ...event, end_time: event.end_time + (i % 2) * 60_000_000 })),
    60_000_000,
  );
  process.stdout.write("\nbounded decoding (walk of the writer schema before avsc), sync:\n");
  const cases: [string, EventContract<unknown>, readonly unknown[], number][] = [
    ["ModelCallEvent", MODEL_CALL_EVENT, events, 200_000],
    ["MetricRollup", METRIC_ROLLUP, rollups, 100_000],
  ];
  for (const [name, contract, values, n] of cases) {
    const subject = valueSubject(`${subjectPrefix}-${name}`);
    const on = await AvroCodec.register(contract, { registryUrl, subject });
    const off = await AvroCodec.register(contract, {
      registryUrl,
      subject,
      boundedDecoding: false,
    });
    const encoded = values.map((value) => on.encode(value));
    const decodeAll = (codec: AvroCodec<unknown>) => () => {
      for (let i = 0; i < n; i++)
        if (!codec.decodeIfKnown(encoded[i % encoded.length] as Buffer)?.ok)
          throw new Error(`${name} ${i % encoded.length} did not decode`);
    };
    // Alternating rounds, so both see the same machine; the best of each.
    let bestOn = 0;
    let bestOff = 0;
    for (let round = 0; round < 3; round++) {
      bestOff = Math.max(bestOff, measure("off", n, decodeAll(off), 2));
      bestOn = Math.max(bestOn, measure("on", n, decodeAll(on), 2));
    }
    const bytes = encoded.reduce((sum, buffer) => sum + buffer.length, 0) / encoded.length;
    line(
      `${name} (${bytes.toFixed(0)} B), walk off`,
      `${Math.round(bestOff).toLocaleString("en")}/s`,
    );
    line(
      `${name} (${bytes.toFixed(0)} B), walk on`,
      `${Math.round(bestOn).toLocaleString("en")}/s`,
    );
    line(`${name}: on / off`, (bestOn / bestOff).toFixed(3));
  }
}

async function main(): Promise<void> {
  const config = loadConnectionConfig();
  if (process.argv[2] === "bounded") {
    await boundedDecoding(config.schemaRegistryUrl, `${config.topicPrefix}bench-${Date.now()}`);
    return;
  }
  const codec = await AvroCodec.register(MODEL_CALL_EVENT, {
    registryUrl: config.schemaRegistryUrl,
    // A subject per run: the bench measures the schema of this checkout, whatever ran before.
    subject: valueSubject(`${config.topicPrefix}bench-${Date.now()}`),
  });
  const distinct = 4_096;
  const events = Array.from({ length: distinct }, (_, i) => typicalEvent(i));
  const n = 200_000;
  process.stdout.write(
    `node ${process.version}, one core, best of 5 rounds; ${n.toLocaleString("en")} events per round\n\n`,
  );

  let encoded: Buffer[] = [];
  const encodeRate = measure("encode", n, () => {
    encoded = new Array<Buffer>(n);
    for (let i = 0; i < n; i++) encoded[i] = codec.encode(events[i % distinct] as ModelCallEvent);
  });
  const bytes = encoded.reduce((sum, buffer) => sum + buffer.length, 0) / n;
  line(
    "encode (validate + Avro + header)",
    `${Math.round(encodeRate).toLocaleString("en")}/s`,
    TARGETS.encode,
    encodeRate,
  );
  line("bytes per event (wire format)", bytes.toFixed(1));
  const json = Buffer.byteLength(JSON.stringify(events[1]));
  line("bytes per event as JSON, for scale", String(json));

  let ok = 0;
  const decodeRate = measure("decode", n, () => {
    ok = 0;
    for (let i = 0; i < n; i++) if (codec.decodeIfKnown(encoded[i] as Buffer)?.ok) ok++;
  });
  if (ok !== n) throw new Error(`only ${ok} of ${n} decoded`);
  line(
    "decode (header + Avro + validate), sync",
    `${Math.round(decodeRate).toLocaleString("en")}/s`,
    TARGETS.decode,
    decodeRate,
  );
  const decodeAsyncRate = await measureAsync(n, async () => {
    for (let i = 0; i < n; i++) await codec.decode(encoded[i] as Buffer);
  });
  line(
    "decode, awaited per record",
    `${Math.round(decodeAsyncRate).toLocaleString("en")}/s`,
    TARGETS.decode,
    decodeAsyncRate,
  );

  const accumulateN = 2_000_000;
  const accumulateRate = measure("accumulate", accumulateN, () => {
    const accumulator = new WindowAccumulator();
    for (let i = 0; i < accumulateN; i++) accumulator.add(events[i % distinct] as ModelCallEvent);
  });
  line(
    "accumulator add",
    `${Math.round(accumulateRate).toLocaleString("en")}/s`,
    TARGETS.accumulate,
    accumulateRate,
  );
  const windowsRate = measure("windows", accumulateN, () => {
    const windows = new Map<string, ServiceWindows>();
    for (let i = 0; i < accumulateN; i++) {
      const event = events[i % distinct] as ModelCallEvent;
      let service = windows.get(event.service);
      if (!service)
        windows.set(event.service, (service = new ServiceWindows(event.service, 60_000_000)));
      service.add(event);
    }
  });
  line(
    "window assign + total + per-model add",
    `${Math.round(windowsRate).toLocaleString("en")}/s`,
    TARGETS.accumulate,
    windowsRate,
  );

  const parts = Array.from({ length: 60 }, (_, p) => {
    const accumulator = new WindowAccumulator();
    for (let i = 0; i < 1_000; i++)
      accumulator.add(events[(p * 1_000 + i) % distinct] as ModelCallEvent);
    return accumulator;
  });
  const mergeRate = measure(
    "merge",
    parts.length,
    () => {
      let total = new WindowAccumulator();
      for (const part of parts) total = merge(total, part);
    },
    20,
  );
  line("merge of two 1,000-call rollups", `${(1e6 / mergeRate).toFixed(1)} µs`);
  const rollupRate = measure(
    "toRollup",
    parts.length,
    () => {
      for (const part of parts) part.toRollup("svc", null, { start: 0, end: 60_000_000 });
    },
    20,
  );
  line("rollup record (counts, sketch, rates)", `${(1e6 / rollupRate).toFixed(1)} µs`);
  const bins =
    parts[0]?.toRollup("svc", null, { start: 0, end: 60_000_000 }).latency.keys.length ?? 0;
  line("latency sketch bins in one such rollup", String(bins));
  await boundedDecoding(config.schemaRegistryUrl, `${config.topicPrefix}bench-${Date.now()}`);
}

main().catch((error: unknown) => {
  process.stderr.write(
    `bench failed: ${error instanceof Error ? error.message : String(error)}\n` +
      "It needs a schema registry: start the local stack (npm run stack:up) or set SCHEMA_REGISTRY_URL.\n",
  );
  process.exitCode = 1;
});
