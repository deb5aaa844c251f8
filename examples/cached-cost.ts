/**
 * A cached call's cost, as the README shows it ("Cached and audio tokens"): run it with
 * `npx tsx examples/cached-cost.ts`. `test/readme.e2e.test.ts` runs it and checks that the README
 * shows this code and what it prints.
 */
// README: begin
import { instrument, usageFromAnthropic } from "mcp-observatory";

const interceptor = instrument({ serviceName: "example-mcp" });
const call = {
  model: "claude-sonnet-4-0",
  provider: "anthropic",
  endTime: new Date("2026-12-01T12:00:00Z"), // priced as at the call's end
};
// Anthropic's input_tokens exclude the cache: 50 new tokens, 9 000 read from the cache, 1 000 written.
const cached = await interceptor.interceptModelCall({
  ...call,
  usage: usageFromAnthropic({
    input_tokens: 50,
    output_tokens: 20,
    cache_read_input_tokens: 9_000,
    cache_creation_input_tokens: 1_000,
  }),
});
const uncached = await interceptor.interceptModelCall({
  ...call,
  usage: { inputTokens: 10_050, outputTokens: 20 },
});
console.log(cached?.prompt_tokens, cached?.cache_read_tokens, cached?.cost_nano_usd);
console.log(uncached?.prompt_tokens, uncached?.cache_read_tokens, uncached?.cost_nano_usd);
// README: end
await interceptor.shutdown();
