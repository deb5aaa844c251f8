-- Migration 4: the service total is a scope of its own, not a model name.
-- Idempotent, so schema/postgres.sql can run it again safely.

-- Before, the service total was stored as model '*', so a model a client named "*" overwrote the
-- total. Now every row has a scope: 'service' (the total over all of the service's calls; model
-- is '') or 'model' (one model's calls; model is its name, whatever the name is). The scope is
-- part of the key. Rows stored as model '*' before this migration become the totals: a model
-- really named "*" could not be told from them, and was overwritten by them anyway.
do $$
begin
  if not exists (select 1 from schema_migrations where version = 4) then
    alter table metric_rollups add column if not exists scope text not null default 'model';
    update metric_rollups set scope = 'service', model = '' where model = '*';
    alter table metric_rollups alter column scope drop default;
    alter table metric_rollups
      add constraint metric_rollups_scope check (scope in ('service', 'model')),
      add constraint metric_rollups_total_model check (scope = 'model' or model = '');
    alter table metric_rollups drop constraint metric_rollups_pkey;
    alter table metric_rollups
      add constraint metric_rollups_pkey primary key (service, scope, model, window_start, window_end);
  end if;
end
$$;

-- merge_rollups returns the scope and keeps the scopes apart.
drop function if exists merge_rollups(interval, timestamptz, timestamptz);
create function merge_rollups(bucket interval, from_time timestamptz, to_time timestamptz)
returns table (
  service text, scope text, model text, window_start timestamptz, windows bigint, calls bigint,
  calls_with_cost bigint, cost_usd numeric, errors bigint, late bigint, fallback_rate double precision,
  retry_rate double precision, low_confidence_rate double precision,
  confidence_gate_block_rate double precision, prompt_diff_violation_rate double precision,
  shadow_disagreement_rate double precision, deterministic_fallback_rate double precision,
  high_risk_path_rate double precision, golden_financial_failure_rate double precision,
  error_rate double precision, avg_cost_usd double precision, latency_sketches jsonb
)
language sql stable as $$
  select r.service, r.scope, r.model, date_bin(bucket, r.window_start, timestamptz 'epoch') as window_start,
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
  group by r.service, r.scope, r.model, date_bin(bucket, r.window_start, timestamptz 'epoch')
$$;

insert into schema_migrations (version, name) values (4, 'rollup_scope') on conflict (version) do nothing;
