/**
 * The OTLP trace messages this project reads and writes, as TypeScript types mirroring the
 * protocol's definitions (opentelemetry/proto/collector/trace/v1, trace/v1, common/v1,
 * resource/v1). Only the fields the project uses are kept: span events, links, flags, dropped
 * counts and scope attributes are skipped when decoding (as unknown fields are).
 *
 * @module
 */

/** `opentelemetry.proto.common.v1.AnyValue`: one of its fields, or none (an empty value). */
export type OtlpAnyValue =
  | { readonly stringValue: string }
  | { readonly boolValue: boolean }
  /** int64. */
  | { readonly intValue: bigint }
  | { readonly doubleValue: number }
  | { readonly bytesValue: Uint8Array }
  | { readonly arrayValue: { readonly values: readonly OtlpAnyValue[] } }
  | { readonly kvlistValue: { readonly values: readonly OtlpKeyValue[] } }
  | { readonly [key: string]: never };

/** `opentelemetry.proto.common.v1.KeyValue`. */
export interface OtlpKeyValue {
  readonly key: string;
  readonly value: OtlpAnyValue;
}

/** `opentelemetry.proto.trace.v1.Status` (code: 0 unset, 1 ok, 2 error). */
export interface OtlpStatus {
  readonly code: number;
  readonly message?: string;
}

/** Span kinds (`opentelemetry.proto.trace.v1.Span.SpanKind`). */
export const SPAN_KIND = Object.freeze({
  unspecified: 0,
  internal: 1,
  server: 2,
  client: 3,
  producer: 4,
  consumer: 5,
});

/** Status codes (`opentelemetry.proto.trace.v1.Status.StatusCode`). */
export const STATUS_CODE = Object.freeze({ unset: 0, ok: 1, error: 2 });

/** `opentelemetry.proto.trace.v1.Span`. */
export interface OtlpSpan {
  /** 16 bytes. */
  readonly traceId: Uint8Array;
  /** 8 bytes. */
  readonly spanId: Uint8Array;
  /** 8 bytes; absent (or empty on the wire) for a root span. */
  readonly parentSpanId?: Uint8Array;
  readonly traceState?: string;
  readonly name: string;
  readonly kind: number;
  /** fixed64. */
  readonly startTimeUnixNano: bigint;
  /** fixed64. */
  readonly endTimeUnixNano: bigint;
  readonly attributes: readonly OtlpKeyValue[];
  readonly status?: OtlpStatus;
}

/** `opentelemetry.proto.common.v1.InstrumentationScope` (its attributes skipped). */
export interface OtlpScope {
  readonly name: string;
  readonly version?: string;
}

/** `opentelemetry.proto.trace.v1.ScopeSpans`. */
export interface OtlpScopeSpans {
  readonly scope?: OtlpScope;
  readonly spans: readonly OtlpSpan[];
}

/** `opentelemetry.proto.resource.v1.Resource`. */
export interface OtlpResource {
  readonly attributes: readonly OtlpKeyValue[];
}

/** `opentelemetry.proto.trace.v1.ResourceSpans`. */
export interface OtlpResourceSpans {
  readonly resource?: OtlpResource;
  readonly scopeSpans: readonly OtlpScopeSpans[];
  readonly schemaUrl?: string;
}

/** `opentelemetry.proto.collector.trace.v1.ExportTraceServiceRequest`. */
export interface OtlpTraceRequest {
  readonly resourceSpans: readonly OtlpResourceSpans[];
}

/** `opentelemetry.proto.collector.trace.v1.ExportTracePartialSuccess`. */
export interface OtlpPartialSuccess {
  /** int64. */
  readonly rejectedSpans: bigint;
  readonly errorMessage: string;
}

/** `opentelemetry.proto.collector.trace.v1.ExportTraceServiceResponse`. */
export interface OtlpTraceResponse {
  readonly partialSuccess?: OtlpPartialSuccess;
}
