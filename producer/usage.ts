/**
 * Providers' usage objects as {@link ReportedUsage}: the prompt count is every input token,
 * cached and audio ones included, with the cache and audio counts as its parts.
 */
import type { ReportedUsage } from "./types.js";

/** The usage of an OpenAI Chat Completions or Responses API response (the fields read). */
export interface OpenAIUsage {
  readonly prompt_tokens?: number;
  readonly completion_tokens?: number;
  readonly input_tokens?: number;
  readonly output_tokens?: number;
  readonly prompt_tokens_details?: {
    readonly cached_tokens?: number;
    readonly audio_tokens?: number;
  } | null;
  readonly input_tokens_details?: { readonly cached_tokens?: number } | null;
  readonly completion_tokens_details?: { readonly audio_tokens?: number } | null;
}

/** The usage of an Anthropic Messages API response (the fields read). */
export interface AnthropicUsage {
  readonly input_tokens?: number;
  readonly output_tokens?: number;
  readonly cache_read_input_tokens?: number | null;
  readonly cache_creation_input_tokens?: number | null;
}

/** Keeps the fields that are set. */
function defined(usage: Record<string, number | null | undefined>): ReportedUsage {
  const result: Record<string, number> = {};
  for (const [key, value] of Object.entries(usage))
    if (value !== undefined && value !== null) result[key] = value;
  return result;
}

/**
 * OpenAI's usage: its prompt (or input) tokens include the cached tokens and the audio tokens
 * already, so they are taken as they are.
 */
export function usageFromOpenAI(usage: OpenAIUsage): ReportedUsage {
  return defined({
    promptTokens: usage.prompt_tokens ?? usage.input_tokens,
    completionTokens: usage.completion_tokens ?? usage.output_tokens,
    cacheReadTokens:
      usage.prompt_tokens_details?.cached_tokens ?? usage.input_tokens_details?.cached_tokens,
    inputAudioTokens: usage.prompt_tokens_details?.audio_tokens,
    outputAudioTokens: usage.completion_tokens_details?.audio_tokens,
  });
}

/**
 * Anthropic's usage: its `input_tokens` exclude the cache reads and writes, so the prompt count is
 * their sum.
 */
export function usageFromAnthropic(usage: AnthropicUsage): ReportedUsage {
  const cacheRead = usage.cache_read_input_tokens ?? undefined;
  const cacheWrite = usage.cache_creation_input_tokens ?? undefined;
  return defined({
    promptTokens:
      usage.input_tokens === undefined
        ? undefined
        : usage.input_tokens + (cacheRead ?? 0) + (cacheWrite ?? 0),
    completionTokens: usage.output_tokens,
    cacheReadTokens: cacheRead,
    cacheWriteTokens: cacheWrite,
  });
}
