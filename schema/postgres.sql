-- MCP Observatory's PostgreSQL schema, from scratch or over an existing database:
--   psql "$DATABASE_URL" -f schema/postgres.sql
-- Safe to run twice. It runs every migration in order; each is idempotent and records itself in
-- schema_migrations. `mcp-observatory migrate` (sink/migrate.ts) applies the same files.
\set ON_ERROR_STOP on
\ir migrations/001_initial.sql
\ir migrations/002_topic_ids.sql
\ir migrations/003_rollup_revisions.sql
\ir migrations/004_rollup_scope.sql
\ir migrations/005_rollup_other_models.sql
\ir migrations/006_usage_cache_tokens.sql
\ir migrations/007_latency_percentiles.sql
