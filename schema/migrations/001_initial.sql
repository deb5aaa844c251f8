-- Migration 1: spans, metric rollups, alerts, consumed offsets.
-- Idempotent (IF NOT EXISTS throughout), so schema/postgres.sql can run it again safely.

create table if not exists schema_migrations (
  version    integer primary key,
  name       text not null,
  applied_at timestamptz not null default now()
);

-- One row per span (model call or MCP request), inserted once: a redelivered event changes nothing.
create table if not exists spans (
  span_id                          text primary key,
  event_id                         uuid not null unique,
  trace_id                         text not null,
  parent_span_id                   text,
  kind                             text not null,
  service                          text not null,
  service_instance                 text not null,
  provider                         text,
  model                            text,
  tool_name                        text,
  mcp_method                       text,
  start_time                       timestamptz not null,
  end_time                         timestamptz not null,
  duration_ms                      double precision generated always as (extract(epoch from (end_time - start_time)) * 1000) stored,
  prompt_tokens                    bigint,
  completion_tokens                bigint,
  token_source                     text not null,
  cost_nano_usd                    bigint,
  cost_usd                         numeric(24, 9) generated always as (cost_nano_usd::numeric / 1000000000) stored,
  retries                          integer not null,
  fallback_used                    boolean not null,
  confidence                       double precision,
  confidence_gate_threshold        double precision,
  high_risk_path                   boolean not null,
  deterministic_fallback_triggered boolean not null,
  prompt_diff_score                double precision,
  shadow_agreement                 boolean,
  is_golden_financial_scenario     boolean not null,
  golden_scenario_passed           boolean,
  status                           text not null,
  error_type                       text,
  prompt_size_bytes                bigint,
  response_size_bytes              bigint,
  prompt_sha256                    bytea,
  response_sha256                  bytea,
  prompt_text                      text,
  response_text                    text,
  attributes                       jsonb not null default '{}'::jsonb,
  source_topic                     text,
  source_partition                 integer,
  source_offset                    bigint,
  inserted_at                      timestamptz not null default now()
);
create index if not exists spans_service_end_time on spans (service, end_time desc);
create index if not exists spans_trace on spans (trace_id);
create index if not exists spans_service_model_end_time on spans (service, model, end_time desc) where model is not null;

-- One row per (service, model, window); model '*' is the service total. Counts add up across
-- windows; the ratio rates are derived in generated columns, latency quantiles come from the sketch.
create table if not exists metric_rollups (
  service                  text not null,
  model                    text not null,
  window_start             timestamptz not null,
  window_end               timestamptz not null,
  low_confidence_threshold double precision not null,
  prompt_diff_threshold    double precision not null,
  calls                    bigint not null,
  calls_with_cost          bigint not null,
  cost_nano_usd            bigint not null,
  prompt_tokens            bigint not null,
  completion_tokens        bigint not null,
  calls_tokens_reported    bigint not null,
  calls_tokens_estimated   bigint not null,
  calls_tokens_none        bigint not null,
  fallbacks                bigint not null,
  calls_with_retries       bigint not null,
  retries                  bigint not null,
  low_confidence           bigint not null,
  calls_with_confidence    bigint not null,
  gate_blocks              bigint not null,
  calls_with_gate          bigint not null,
  prompt_diff_violations   bigint not null,
  calls_with_prompt_diff   bigint not null,
  shadow_disagreements     bigint not null,
  calls_with_shadow        bigint not null,
  deterministic_fallbacks  bigint not null,
  high_risk                bigint not null,
  golden_failures          bigint not null,
  golden_with_result       bigint not null,
  errors                   bigint not null,
  late                     bigint not null,
  -- DDSketch in canonical form: {"relative_accuracy", "zero_count", "keys": [...], "counts": [...], "min_ms", "max_ms"}
  latency_sketch           jsonb not null,
  latency_p50_ms           double precision,
  latency_p95_ms           double precision,
  latency_p99_ms           double precision,
  cost_usd                      numeric(24, 9) generated always as (cost_nano_usd::numeric / 1000000000) stored,
  avg_cost_usd                  double precision generated always as (cost_nano_usd::double precision / 1e9 / nullif(calls_with_cost, 0)) stored,
  fallback_rate                 double precision generated always as (fallbacks::double precision / nullif(calls, 0)) stored,
  retry_rate                    double precision generated always as (calls_with_retries::double precision / nullif(calls, 0)) stored,
  low_confidence_rate           double precision generated always as (low_confidence::double precision / nullif(calls_with_confidence, 0)) stored,
  confidence_gate_block_rate    double precision generated always as (gate_blocks::double precision / nullif(calls_with_gate, 0)) stored,
  prompt_diff_violation_rate    double precision generated always as (prompt_diff_violations::double precision / nullif(calls_with_prompt_diff, 0)) stored,
  shadow_disagreement_rate      double precision generated always as (shadow_disagreements::double precision / nullif(calls_with_shadow, 0)) stored,
  deterministic_fallback_rate   double precision generated always as (deterministic_fallbacks::double precision / nullif(high_risk, 0)) stored,
  high_risk_path_rate           double precision generated always as (high_risk::double precision / nullif(calls, 0)) stored,
  golden_financial_failure_rate double precision generated always as (golden_failures::double precision / nullif(golden_with_result, 0)) stored,
  error_rate                    double precision generated always as (errors::double precision / nullif(calls, 0)) stored,
  updated_at               timestamptz not null default now(),
  primary key (service, model, window_start, window_end)
);
create index if not exists metric_rollups_window on metric_rollups (window_start, service);

-- One row per alert incident; `history` keeps every transition (firing, resolved) in order.
create table if not exists alerts (
  alert_id           text primary key,
  service            text not null,
  rule               text not null,
  metric             text not null,
  comparator         text not null,
  state              text not null,
  threshold          double precision not null,
  min_samples        bigint not null,
  observed_value     double precision,
  sample_count       bigint not null,
  fired_window_start timestamptz not null,
  window_start       timestamptz not null,
  window_end         timestamptz not null,
  emitted_at         timestamptz not null,
  history            jsonb not null default '[]'::jsonb,
  updated_at         timestamptz not null default now()
);
create index if not exists alerts_service_state on alerts (service, state, emitted_at desc);

-- The sink's position per consumer group, topic and partition, written in the same transaction
-- as the rows it consumed.
create table if not exists consumed_offsets (
  consumer_group text not null,
  topic          text not null,
  partition      integer not null,
  next_offset    bigint not null,
  updated_at     timestamptz not null default now(),
  primary key (consumer_group, topic, partition)
);

-- Rollups merged into coarser windows (hour, day, ...) by adding counts. Latency sketches are
-- merged by the library (metrics/LatencySketch) from `latency_sketches`, the list of sketches.
-- (Migration 4 replaces it with one that also returns the scope; dropped first, so running this
-- file again over a newer database works, and the later migrations put the newer one back.)
drop function if exists merge_rollups(interval, timestamptz, timestamptz);
create function merge_rollups(bucket interval, from_time timestamptz, to_time timestamptz)
returns table (
  service text, model text, window_start timestamptz, windows bigint, calls bigint, calls_with_cost bigint,
  cost_usd numeric, errors bigint, late bigint, fallback_rate double precision, retry_rate double precision,
  low_confidence_rate double precision, confidence_gate_block_rate double precision,
  prompt_diff_violation_rate double precision, shadow_disagreement_rate double precision,
  deterministic_fallback_rate double precision, high_risk_path_rate double precision,
  golden_financial_failure_rate double precision, error_rate double precision, avg_cost_usd double precision,
  latency_sketches jsonb
)
language sql stable as $$
  select r.service, r.model, date_bin(bucket, r.window_start, timestamptz 'epoch') as window_start,
         count(*), sum(r.calls)::bigint, sum(r.calls_with_cost)::bigint,
         sum(r.cost_nano_usd)::numeric / 1000000000, sum(r.errors)::bigint, sum(r.late)::bigint,
         sum(r.fallbacks)::double precision / nullif(sum(r.calls), 0),
         sum(r.calls_with_retries)::double precision / nullif(sum(r.calls), 0),
         sum(r.low_confidence)::double precision / nullif(sum(r.calls_with_confidence), 0),
         sum(r.gate_blocks)::double precision / nullif(sum(r.calls_with_gate), 0),
         sum(r.prompt_diff_violations)::double precision / nullif(sum(r.calls_with_prompt_diff), 0),
         sum(r.shadow_disagreements)::double precision / nullif(sum(r.calls_with_shadow), 0),
         sum(r.deterministic_fallbacks)::double precision / nullif(sum(r.high_risk), 0),
         sum(r.high_risk)::double precision / nullif(sum(r.calls), 0),
         sum(r.golden_failures)::double precision / nullif(sum(r.golden_with_result), 0),
         sum(r.errors)::double precision / nullif(sum(r.calls), 0),
         sum(r.cost_nano_usd)::double precision / 1e9 / nullif(sum(r.calls_with_cost), 0),
         jsonb_agg(r.latency_sketch order by r.window_start)
  from metric_rollups r
  where r.window_start >= from_time and r.window_start < to_time
  group by r.service, r.model, date_bin(bucket, r.window_start, timestamptz 'epoch')
$$;

insert into schema_migrations (version, name) values (1, 'initial') on conflict (version) do nothing;
