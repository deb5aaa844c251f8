-- Migration 6: each span's cache and audio token counts.
-- Idempotent, so schema/postgres.sql can run it again safely.

-- Parts of the span's token counts with prices of their own: input tokens read from and written to
-- the provider's prompt cache and audio input tokens (parts of prompt_tokens, which counts every
-- input token), and audio output tokens (part of completion_tokens). Null when not reported, as
-- in every span stored before these columns existed.
alter table spans add column if not exists cache_read_tokens bigint;
alter table spans add column if not exists cache_write_tokens bigint;
alter table spans add column if not exists input_audio_tokens bigint;
alter table spans add column if not exists output_audio_tokens bigint;

insert into schema_migrations (version, name) values (6, 'usage_cache_tokens') on conflict (version) do nothing;
