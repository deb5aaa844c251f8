-- Migration 2: the topic id of each stored position.
-- Idempotent, so schema/postgres.sql can run it again safely.

-- The id Kafka gave the topic the position was read from (base64url, as Kafka prints it). A topic
-- deleted and created again under the same name, or the same name on another cluster, has
-- another id: the sink refuses to go on from positions of the old one. Positions stored before
-- this column existed have none; the sink gives them the topic's current id.
alter table consumed_offsets add column if not exists topic_id text;

insert into schema_migrations (version, name) values (2, 'topic_ids') on conflict (version) do nothing;
