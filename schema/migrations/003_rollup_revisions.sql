-- Migration 3: the revision of each stored rollup.
-- Idempotent, so schema/postgres.sql can run it again safely.

-- A window's rollups are emitted again, complete, when events arrive after it closed but within
-- the allowed lateness; each emission has a higher revision (0: the first). A row is replaced only
-- by a rollup of the same or a higher revision, so an older one read again never undoes a newer
-- one. Rows stored before this column existed are first emissions: 0.
alter table metric_rollups
  add column if not exists revision integer not null default 0 check (revision >= 0);

insert into schema_migrations (version, name) values (3, 'rollup_revisions') on conflict (version) do nothing;
