-- Migration 5: each window's overflow series has a scope of its own, 'other'.
-- Idempotent, so schema/postgres.sql can run it again safely.

-- Model names come from clients, so a service's window has a series of its own for at most
-- maxModelsPerWindow models (the first seen); the calls of further models are folded into one
-- overflow series per (service, window), stored with scope 'other' and model '' (the constraint
-- metric_rollups_total_model, `scope = 'model' or model = ''`, already holds every scope but
-- 'model' to ''). No model name can address it, as none can address the total. merge_rollups
-- groups by scope, so the overflow series merges apart from the total and the models.
do $$
begin
  if not exists (select 1 from schema_migrations where version = 5) then
    alter table metric_rollups drop constraint if exists metric_rollups_scope;
    alter table metric_rollups
      add constraint metric_rollups_scope check (scope in ('service', 'model', 'other'));
  end if;
end
$$;

insert into schema_migrations (version, name) values (5, 'rollup_other_models') on conflict (version) do nothing;
