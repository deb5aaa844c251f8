/**
 * An OTLP/HTTP trace receiver for tests, apart from the product's code: node:http, each request
 * decoded with the official OpenTelemetry protobuf definitions (the generated code of
 * @opentelemetry/otlp-transformer), answered from a script (a status, a partial success, or held
 * without an answer), and 200 otherwise.
 */
import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import { createRequire } from "node:module";
import { gunzipSync } from "node:zlib";

interface ProtoType {
  decode(bytes: Uint8Array): unknown;
  encode(message: unknown): { finish(): Uint8Array };
  toObject(message: unknown, options: Record<string, unknown>): unknown;
}

const require = createRequire(import.meta.url);
const ROOT = require("otlp-protobuf-definitions/build/src/generated/root.js") as {
  opentelemetry: {
    proto: {
      collector: {
        trace: {
          v1: {
            ExportTraceServiceRequest: ProtoType;
            ExportTraceServiceResponse: ProtoType;
          };
        };
      };
    };
  };
};
const TRACE = ROOT.opentelemetry.proto.collector.trace.v1;

/** An attribute value as the official decoder gives it (`toObject`, longs as strings). */
export type OfficialValue = {
  readonly stringValue?: string;
  readonly boolValue?: boolean;
  readonly intValue?: string;
  readonly doubleValue?: number;
};

/** A span as received, ids in hex, times as decimal strings. */
export interface ReceivedSpan {
  readonly service: string;
  readonly resource: Readonly<Record<string, OfficialValue>>;
  readonly scope: string;
  readonly traceId: string;
  readonly spanId: string;
  readonly parentSpanId: string;
  readonly name: string;
  readonly kind: number;
  readonly startTimeUnixNano: string;
  readonly endTimeUnixNano: string;
  readonly attributes: Readonly<Record<string, OfficialValue>>;
  readonly status: { readonly code?: number; readonly message?: string };
}

/** One request the receiver got. */
export interface ReceivedRequest {
  readonly path: string;
  readonly headers: IncomingMessage["headers"];
  readonly spans: readonly ReceivedSpan[];
  /** The status answered, or "held" (never answered). */
  readonly status: number | "held";
  /** When it arrived, ms since the epoch. */
  readonly at: number;
}

/** How to answer one request. */
export type ScriptedAnswer =
  | { readonly status: number; readonly body?: string; readonly headers?: Record<string, string> }
  | { readonly partialSuccess: { readonly rejectedSpans: number; readonly errorMessage: string } }
  | "hold";

interface RawKeyValue {
  key: string;
  value?: OfficialValue;
}
interface RawRequest {
  resourceSpans?: {
    resource?: { attributes?: RawKeyValue[] };
    scopeSpans?: {
      scope?: { name?: string };
      spans?: {
        traceId: string;
        spanId: string;
        parentSpanId?: string;
        name: string;
        kind?: number;
        startTimeUnixNano: string;
        endTimeUnixNano: string;
        attributes?: RawKeyValue[];
        status?: { code?: number; message?: string };
      }[];
    }[];
  }[];
}

const hex = (base64: string | undefined): string =>
  Buffer.from(base64 ?? "", "base64").toString("hex");

const mapOf = (pairs: readonly RawKeyValue[] | undefined): Record<string, OfficialValue> =>
  Object.fromEntries((pairs ?? []).map((pair) => [pair.key, pair.value ?? {}]));

/** An `ExportTraceServiceRequest` body decoded with the official definitions, span by span. */
export function officialSpans(body: Uint8Array): ReceivedSpan[] {
  const message = TRACE.ExportTraceServiceRequest.decode(body);
  const raw = TRACE.ExportTraceServiceRequest.toObject(message, {
    longs: String,
    bytes: String,
    enums: Number,
    defaults: false,
  }) as RawRequest;
  const spans: ReceivedSpan[] = [];
  for (const resourceSpans of raw.resourceSpans ?? []) {
    const resource = mapOf(resourceSpans.resource?.attributes);
    for (const scopeSpans of resourceSpans.scopeSpans ?? [])
      for (const span of scopeSpans.spans ?? [])
        spans.push({
          service: resource["service.name"]?.stringValue ?? "",
          resource,
          scope: scopeSpans.scope?.name ?? "",
          traceId: hex(span.traceId),
          spanId: hex(span.spanId),
          parentSpanId: hex(span.parentSpanId),
          name: span.name,
          kind: span.kind ?? 0,
          startTimeUnixNano: span.startTimeUnixNano,
          endTimeUnixNano: span.endTimeUnixNano,
          attributes: mapOf(span.attributes),
          status: span.status ?? {},
        });
  }
  return spans;
}

/** The receiver; `script` answers requests in order, then 200. */
export class OtlpReceiver {
  readonly requests: ReceivedRequest[] = [];
  readonly script: ScriptedAnswer[] = [];
  private readonly held: ServerResponse[] = [];
  private server: Server | undefined;
  /** The base endpoint (without /v1/traces). */
  endpoint = "";

  async start(): Promise<void> {
    this.server = createServer((request, response) => {
      void this.handle(request, response);
    });
    await new Promise<void>((resolve) => this.server?.listen(0, "127.0.0.1", resolve));
    const address = this.server.address();
    const port = typeof address === "object" && address !== null ? address.port : 0;
    this.endpoint = `http://127.0.0.1:${port}`;
  }

  /** Spans of the requests answered 200, in order. */
  acknowledged(): ReceivedSpan[] {
    return this.requests.filter((r) => r.status === 200).flatMap((r) => r.spans);
  }

  /** Answers the held requests 200 from now on (their sockets are closed). */
  release(): void {
    for (const response of this.held.splice(0)) response.socket?.destroy();
  }

  private async handle(request: IncomingMessage, response: ServerResponse): Promise<void> {
    const at = Date.now();
    const chunks: Buffer[] = [];
    for await (const chunk of request) chunks.push(chunk as Buffer);
    let body = Buffer.concat(chunks);
    if (request.headers["content-encoding"] === "gzip") body = gunzipSync(body);
    const spans = officialSpans(body);
    const answer = this.script.shift() ?? { status: 200 };
    const path = request.url ?? "";
    if (answer === "hold") {
      this.requests.push({ path, headers: request.headers, spans, status: "held", at });
      this.held.push(response);
      return;
    }
    if ("partialSuccess" in answer) {
      this.requests.push({ path, headers: request.headers, spans, status: 200, at });
      const encoded = TRACE.ExportTraceServiceResponse.encode({
        partialSuccess: answer.partialSuccess,
      }).finish();
      response
        .writeHead(200, { "content-type": "application/x-protobuf" })
        .end(Buffer.from(encoded));
      return;
    }
    this.requests.push({ path, headers: request.headers, spans, status: answer.status, at });
    response
      .writeHead(answer.status, { "content-type": "text/plain", ...answer.headers })
      .end(answer.body ?? "");
  }

  async stop(): Promise<void> {
    this.release();
    this.server?.closeAllConnections();
    const server = this.server;
    if (!server) return;
    await new Promise<void>((resolve) => {
      server.close(() => {
        resolve();
      });
    });
  }
}
