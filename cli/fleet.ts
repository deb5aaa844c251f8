/**
 * A simulated fleet of MCP server replicas: several services × several replicas, each a real
 * `instrument()` interceptor with its own exporter, making model calls with realistic mixes of
 * models, token counts, latencies, confidence, fallbacks, shadow results and golden scenarios.
 * One service can drift into breach for a stretch of the run (so alerts fire) and recover (so
 * they resolve). Seeded: the same seed gives the same sequence of calls per replica.
 *
 * Used by `mcp-observatory demo` and by the end-to-end benchmark (one process per replica group).
 */
import { instrument, type MCPInterceptor } from "../producer/interceptor.js";
import type { EventExporter } from "../producer/exporters/types.js";
import { startSpanContext } from "../producer/trace.js";
import type { ModelCallInput } from "../producer/types.js";

/** Service names of the simulated fleet, in order; `--services N` takes the first N. */
export const FLEET_SERVICES = Object.freeze([
  "payments-mcp",
  "search-mcp",
  "support-mcp",
  "docs-mcp",
  "calendar-mcp",
  "crm-mcp",
  "billing-mcp",
  "travel-mcp",
]);

interface ModelChoice {
  readonly model: string;
  readonly provider: string;
  readonly weight: number;
  /** Median latency, ms. */
  readonly latencyMs: number;
}

const MODELS: readonly ModelChoice[] = [
  { model: "gpt-4o", provider: "openai", weight: 0.35, latencyMs: 1400 },
  { model: "gpt-4o-mini", provider: "openai", weight: 0.35, latencyMs: 600 },
  { model: "claude-3-5-sonnet-latest", provider: "anthropic", weight: 0.2, latencyMs: 1800 },
  { model: "claude-3-5-haiku-latest", provider: "anthropic", weight: 0.08, latencyMs: 700 },
  // A fine-tuned in-house model has no public price: its cost is null and counted as unpriced.
  { model: "acme-ft-llama-8b", provider: "acme", weight: 0.02, latencyMs: 400 },
];

const TOOLS = ["lookup_account", "search_docs", "create_ticket", "quote_price", "summarize"];

/** How a service behaves; the drifting service switches to `drifted` for part of the run. */
interface Behaviour {
  readonly confidenceMean: number;
  readonly confidenceSd: number;
  readonly fallbackRate: number;
  readonly retryRate: number;
  readonly errorRate: number;
  readonly shadowDisagreement: number;
  readonly goldenFailure: number;
  readonly promptDiffMean: number;
}

const HEALTHY: Behaviour = Object.freeze({
  confidenceMean: 0.88,
  confidenceSd: 0.05,
  fallbackRate: 0.02,
  retryRate: 0.03,
  errorRate: 0.005,
  shadowDisagreement: 0.01,
  goldenFailure: 0,
  promptDiffMean: 0.08,
});

const DRIFTED: Behaviour = Object.freeze({
  confidenceMean: 0.62,
  confidenceSd: 0.12,
  fallbackRate: 0.3,
  retryRate: 0.12,
  errorRate: 0.02,
  shadowDisagreement: 0.25,
  goldenFailure: 0.35,
  promptDiffMean: 0.3,
});

/** A small, fast, seeded PRNG (mulberry32). */
export function seededRandom(seed: number): () => number {
  let state = seed >>> 0;
  return () => {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** Generates one replica's calls. */
export class CallGenerator {
  private readonly random: () => number;
  private spare: number | undefined;

  constructor(seed: number) {
    this.random = seededRandom(seed);
  }

  /** A model call as the host would describe it, ending at `endTimeMs`. */
  next(endTimeMs: number, drifting: boolean): ModelCallInput {
    const r = this.random;
    const b = drifting ? DRIFTED : HEALTHY;
    const choice = this.pick(MODELS);
    const durationMs = Math.max(5, Math.round(choice.latencyMs * Math.exp(0.45 * this.normal())));
    const promptTokens = Math.max(8, Math.round(700 * Math.exp(0.8 * this.normal())));
    const completionTokens = Math.max(1, Math.round(220 * Math.exp(0.7 * this.normal())));
    const confidence = clamp01(b.confidenceMean + b.confidenceSd * this.normal());
    const gated = r() < 0.6;
    const highRisk = r() < 0.15;
    const gateThreshold = 0.7;
    const shadow = r() < 0.25 ? r() >= b.shadowDisagreement : null;
    const golden = r() < 0.08;
    const hasDiff = r() < 0.5;
    const error = r() < b.errorRate;
    const reportsUsage = r() < 0.85;
    const input: ModelCallInput = {
      model: choice.model,
      provider: choice.provider,
      toolName: TOOLS[Math.floor(r() * TOOLS.length)] ?? "summarize",
      endTime: endTimeMs,
      durationMs,
      confidence,
      ...(gated ? { confidenceGateThreshold: gateThreshold } : {}),
      highRiskPath: highRisk,
      deterministicFallbackTriggered: highRisk && gated && confidence < gateThreshold,
      ...(hasDiff
        ? { promptDiffScore: clamp01(b.promptDiffMean * Math.exp(0.5 * this.normal())) }
        : {}),
      shadowAgreement: shadow,
      isGoldenFinancialScenario: golden,
      goldenScenarioPassed: golden ? r() >= b.goldenFailure : null,
      retries: r() < b.retryRate ? 1 + Math.floor(r() * 2) : 0,
      fallbackUsed: r() < b.fallbackRate,
      ...(error ? { status: "error" as const, errorType: "RateLimitError" } : {}),
    };
    if (reportsUsage) return { ...input, usage: { promptTokens, completionTokens } };
    // The rest report no usage: the interceptor counts tokens with the model's tokenizer.
    return {
      ...input,
      prompt: words(Math.min(promptTokens, 600), r),
      response: words(Math.min(completionTokens, 300), r),
    };
  }

  private pick(choices: readonly ModelChoice[]): ModelChoice {
    let x = this.random();
    for (const choice of choices) {
      x -= choice.weight;
      if (x < 0) return choice;
    }
    return choices[choices.length - 1] as ModelChoice;
  }

  /** Standard normal (Box–Muller, both values used). */
  private normal(): number {
    if (this.spare !== undefined) {
      const value = this.spare;
      this.spare = undefined;
      return value;
    }
    const u = Math.max(this.random(), Number.EPSILON);
    const v = this.random();
    const radius = Math.sqrt(-2 * Math.log(u));
    this.spare = radius * Math.sin(2 * Math.PI * v);
    return radius * Math.cos(2 * Math.PI * v);
  }
}

const VOCABULARY =
  "the account balance invoice refund policy customer order ticket travel booking price quote summary request tool model answer risk".split(
    " ",
  );

function words(count: number, random: () => number): string {
  const out: string[] = [];
  for (let i = 0; i < count; i++)
    out.push(VOCABULARY[Math.floor(random() * VOCABULARY.length)] ?? "");
  return out.join(" ");
}

function clamp01(value: number): number {
  return Math.min(1, Math.max(0, value));
}

/**
 * One call in this many (per replica, counted, not drawn: the seeded sequences stay as they were)
 * is made from inside an MCP tool call: the replica records the `tool_call` span (`tools/call`,
 * ending with the model call, starting a little before it) and the model call as its child, so a
 * trace shows a model call nested under its tool call. Tool-call spans are events (sent, stored)
 * but count in no rollup.
 */
export const TOOL_CALL_EVERY = 20;

/**
 * Records `input` as a model call made inside an MCP tool call: the tool call's span first, then
 * the model call as its child. Resolves when the model call is recorded.
 */
function interceptInsideToolCall(interceptor: MCPInterceptor, input: ModelCallInput) {
  const tool = startSpanContext(undefined);
  const endTime = Number(input.endTime);
  interceptor.recordSpan(
    {
      kind: "tool_call",
      toolName: input.toolName ?? "summarize",
      startTime: endTime - (input.durationMs ?? 0) - 15,
      endTime,
      attributes: { "mcp.method.name": "tools/call" },
      ...(input.status === "error" ? { status: "error" as const, errorType: input.errorType } : {}),
    },
    tool,
  );
  return interceptor.interceptModelCall({ ...input, parent: tool });
}

/** Settings of {@link runFleet}. */
export interface FleetOptions {
  /** Service names (each gets `replicas` replicas). */
  readonly services: readonly string[];
  readonly replicas: number;
  /** Model calls per second across the whole fleet. */
  readonly ratePerSecond: number;
  readonly durationMs: number;
  /** The exporter of one replica (each replica has its own, as separate processes would). */
  readonly exporterFor: (service: string, replica: number) => EventExporter;
  /** The service that drifts into breach (default: none). */
  readonly driftingService?: string;
  /** Fractions of the run during which it drifts (default 0.3 to 0.6). */
  readonly driftFrom?: number;
  readonly driftTo?: number;
  /** Seed of the call generators (default 42). */
  readonly seed?: number;
  /** Stops early when aborted. */
  readonly signal?: AbortSignal;
  /** Ends the run at the next multiple of this many ms after `durationMs` (aligned windows). */
  readonly alignEndToMs?: number;
  /** How often each replica emits its share, ms (default 50). */
  readonly tickMs?: number;
  /**
   * The fleet's clock, ms since the epoch (default `Date.now`): what is owed, the calls' end times
   * and the drift stretch follow it, so a virtual clock makes a run independent of the machine's
   * load (tests).
   */
  readonly clock?: () => number;
}

/** What a fleet run did. */
export interface FleetResult {
  readonly startedAtMs: number;
  readonly endedAtMs: number;
  /** Events recorded (model calls, and the tool calls some are made in), by service. */
  readonly calls: ReadonlyMap<string, number>;
  readonly recorded: number;
  /** Calls not made because the fleet fell behind its rate (the machine was busy). */
  readonly shortfall: number;
  /** After shutdown: what the exporters delivered and dropped. */
  readonly sent: number;
  readonly dropped: number;
  /** Each replica's local snapshot of active alerts (same rules as the processor). */
  readonly localAlerts: ReadonlyMap<string, readonly string[]>;
}

/**
 * Runs the fleet in this process: every replica is a real interceptor with its own exporter.
 * Resolves after every replica has shut down (exporters flushed).
 */
export async function runFleet(options: FleetOptions): Promise<FleetResult> {
  const tickMs = options.tickMs ?? 50;
  const replicas: {
    service: string;
    interceptor: MCPInterceptor;
    generator: CallGenerator;
    owed: number;
    made: number;
  }[] = [];
  let index = 0;
  for (const service of options.services)
    for (let replica = 0; replica < options.replicas; replica++) {
      replicas.push({
        service,
        interceptor: instrument({
          serviceName: service,
          serviceInstance: `${service}-${replica}`,
          exporter: options.exporterFor(service, replica),
        }),
        generator: new CallGenerator((options.seed ?? 42) * 1000 + index++),
        owed: 0,
        made: 0,
      });
    }
  const perReplica = options.ratePerSecond / Math.max(1, replicas.length);
  const clock = options.clock ?? Date.now;
  const started = clock();
  let end = started + options.durationMs;
  if (options.alignEndToMs !== undefined && options.alignEndToMs > 0)
    end = Math.ceil(end / options.alignEndToMs) * options.alignEndToMs;
  const driftFrom = started + (end - started) * (options.driftFrom ?? 0.3);
  const driftTo = started + (end - started) * (options.driftTo ?? 0.6);
  const calls = new Map<string, number>(options.services.map((service) => [service, 0]));
  let recorded = 0;
  let shortfall = 0;
  let last = started;
  // A replica owes at most this many calls at once: a fleet that cannot keep up (a busy machine)
  // makes fewer calls, counted in `shortfall`, instead of ever larger bursts that block the event
  // loop and hold the exporters back.
  const maxOwed = Math.max(1, perReplica);
  const chunk = 500;

  while (!options.signal?.aborted) {
    const now = clock();
    if (now >= end) break;
    const from = last;
    const elapsedMs = now - last;
    last = now;
    let pending: Promise<unknown>[] = [];
    for (const replica of replicas) {
      replica.owed += (perReplica * elapsedMs) / 1000;
      if (replica.owed > maxOwed) {
        shortfall += Math.floor(replica.owed - maxOwed);
        replica.owed = maxOwed;
      }
      const due = Math.floor(replica.owed);
      replica.owed -= due;
      for (let i = 0; i < due; i++) {
        // Calls end at times spread over the interval they were owed for, as real traffic would.
        const endTime = Math.round(from + ((i + 1) * elapsedMs) / due);
        const drifting =
          replica.service === options.driftingService && endTime >= driftFrom && endTime < driftTo;
        const input = replica.generator.next(endTime, drifting);
        // Events recorded: the tool call's span too, when the call is made inside one.
        const events = replica.made++ % TOOL_CALL_EVERY === TOOL_CALL_EVERY - 1 ? 2 : 1;
        pending.push(
          events === 2
            ? interceptInsideToolCall(replica.interceptor, input)
            : replica.interceptor.interceptModelCall(input),
        );
        recorded += events;
        calls.set(replica.service, (calls.get(replica.service) ?? 0) + events);
        if (pending.length >= chunk) {
          await Promise.all(pending);
          pending = [];
          // Let the exporters' I/O run between chunks.
          await new Promise((resolve) => setImmediate(resolve));
        }
      }
    }
    await Promise.all(pending);
    await new Promise((resolve) =>
      setTimeout(resolve, Math.min(tickMs, Math.max(0, end - clock()))),
    );
  }
  const endedAtMs = clock();
  const localAlerts = new Map<string, string[]>();
  for (const replica of replicas) {
    const active = replica.interceptor.getActiveAlerts();
    if (active.length > 0) localAlerts.set(replica.service, active);
  }
  let sent = 0;
  let dropped = 0;
  await Promise.all(
    replicas.map(async (replica) => {
      await replica.interceptor.shutdown(30_000);
      const counters = replica.interceptor.getCounters();
      sent += counters.sent;
      dropped += counters.dropped;
    }),
  );
  return {
    startedAtMs: started,
    endedAtMs,
    calls,
    recorded,
    shortfall,
    sent,
    dropped,
    localAlerts,
  };
}
