/**
 * Token estimation with a real BPE tokenizer (`gpt-tokenizer`, OpenAI's published encodings).
 * Used only when the provider reported no usage; events then say `token_source = estimated`.
 *
 * Encodings by model:
 * - OpenAI models the tokenizer knows map to their own encoding (`cl100k_base` for GPT-4,
 *   GPT-3.5 and the text-embedding-3 models; `o200k_base` for GPT-4o, GPT-4.1, GPT-5, o1/o3/o4).
 * - Any other model — other vendors (Claude, Gemini, Llama, Mistral, …) and unknown names — is
 *   estimated with `o200k_base`. That is an approximation: those vendors' tokenizers differ or
 *   are not public; modern BPE vocabularies count English prose within roughly ±15% of each other.
 *   Events cannot tell an exact estimate from an approximate one, so prefer provider usage.
 *
 * The encodings load lazily (about 0.3 s and 40 MB for o200k_base) and stay cached.
 */
import { modelToEncodingMap } from "gpt-tokenizer/mapping";

/** The encodings this module uses. */
export type EncodingName = "o200k_base" | "cl100k_base";

type Counter = (text: string) => number;

const loaded = new Map<EncodingName, Counter>();
const loading = new Map<EncodingName, Promise<Counter>>();

/** The encoding used for a model, and whether it is the model's own (not an approximation). */
export function encodingForModel(model: string): { encoding: EncodingName; exact: boolean } {
  const known = (modelToEncodingMap as Record<string, string | undefined>)[model];
  if (known === "cl100k_base") return { encoding: "cl100k_base", exact: true };
  if (known === "o200k_base") return { encoding: "o200k_base", exact: true };
  // gpt-tokenizer's own default for newer OpenAI models is o200k_base.
  const openAi = /^(gpt-|o\d|chatgpt-|text-embedding-|codex-)/.test(model);
  return { encoding: "o200k_base", exact: openAi && known === undefined ? true : false };
}

/** Loads an encoding (once) and returns its token counter. */
export function loadEncoding(encoding: EncodingName): Promise<Counter> {
  const ready = loaded.get(encoding);
  if (ready) return Promise.resolve(ready);
  let pending = loading.get(encoding);
  if (!pending) {
    pending = (
      encoding === "o200k_base"
        ? import("gpt-tokenizer/encoding/o200k_base")
        : import("gpt-tokenizer/encoding/cl100k_base")
    ).then((module) => {
      const counter: Counter = (text) => module.countTokens(text);
      loaded.set(encoding, counter);
      return counter;
    });
    loading.set(encoding, pending);
  }
  return pending;
}

/** Counts tokens now if the model's encoding is loaded; undefined when it still has to load. */
export function countTokensIfLoaded(model: string, text: string): number | undefined {
  if (text === "") return 0;
  return loaded.get(encodingForModel(model).encoding)?.(text);
}

/** Counts the tokens of `text` in the model's encoding, loading it the first time. */
export async function countTokens(model: string, text: string): Promise<number> {
  if (text === "") return 0;
  const counter = await loadEncoding(encodingForModel(model).encoding);
  return counter(text);
}
