/**
 * Names a client chose never drive the terminal: every control character a terminal acts on
 * (ESC sequences, BEL, CR, backspace, C1 controls such as the one-character CSI U+009B, bidi
 * overrides, line separators) is shown as a visible escape in the CLI's tables, headings and
 * lines, and escaped in its JSON lines, which still parse to the same value.
 */
import { describe, expect, it } from "vitest";

import { jsonLine, table, terminalLines, terminalText } from "../cli/output.js";
import { renderRates, type RatesRow } from "../cli/rates.js";

/** Every character class the CLI must not pass through raw. */
const HOSTILE = [
  "\u001b]0;owned\u0007", // OSC: retitle the window, ended by BEL
  "\u001b[2J\u001b[H", // clear the screen, cursor home
  "\u001b]52;c;aGk=\u0007", // OSC 52: write the clipboard
  "fake\rreal", // carriage return: overwrite the line
  "back\bspace",
  "line\nforged",
  "\u009b31m", // C1 CSI
  "\u0085next", // C1 NEL
  "\u202eevil\u202c", // right-to-left override
  "\u2066iso\u2069",
  "sep\u2028arator",
  "del\u007f",
];
/** What a terminal may act on (the line feed too, inside a value). */
const RAW_CONTROL =
  // eslint-disable-next-line no-control-regex -- finding control characters is the point
  /[\u0000-\u001f\u007f-\u009f\u200e\u200f\u202a-\u202e\u2066-\u2069\u2028\u2029]/u;

function ratesRow(
  service: string,
  model: string | null,
  scope: RatesRow["scope"] = model === null ? "service" : "model",
): RatesRow {
  return {
    service,
    scope,
    model,
    windowStart: "2026-12-05T10:00:00.000Z",
    windows: 1,
    calls: 3,
    costUsd: "0.1",
    avgCostUsd: 0.03,
    fallbackRate: 0,
    retryRate: 0,
    lowConfidenceRate: null,
    confidenceGateBlockRate: null,
    promptDiffViolationRate: null,
    shadowDisagreementRate: null,
    deterministicFallbackRate: null,
    highRiskPathRate: 0,
    goldenFinancialFailureRate: null,
    errorRate: 0,
    latencyP50Ms: 10,
    latencyP95Ms: 20,
    latencyP99Ms: 30,
    late: 0,
  };
}

describe("terminal output of names a client chose", () => {
  it("shows every control character of a value as a visible escape", () => {
    for (const name of HOSTILE) {
      const shown = terminalText(name);
      expect(shown, JSON.stringify(name)).not.toMatch(RAW_CONTROL);
      expect(shown).toContain("\\");
    }
    expect(terminalText("\u001b[2J")).toBe("\\x1b[2J");
    expect(terminalText("a\u202eb")).toBe("a\\u202eb");
    // Printable text, quotes, backslashes and non-Latin scripts pass unchanged.
    for (const plain of ["payments-mcp", "quote'\"\\", "💸-payments", "خدمة-الدفع", "e\u0301clair"])
      expect(terminalText(plain)).toBe(plain);
  });

  it("keeps the line feeds of lines the CLI broke itself, and escapes the rest", () => {
    expect(terminalLines("a\nb\u001b[2J")).toBe("a\nb\\x1b[2J");
  });

  it("escapes table cells (line feeds too: a name cannot forge a row), aligned on the escaped text", () => {
    const rendered = table(
      ["service", "calls"],
      HOSTILE.map((name, i) => [name, i]),
    );
    expect(rendered.split("\n")).toHaveLength(HOSTILE.length + 2);
    for (const line of rendered.split("\n")) expect(line).not.toMatch(RAW_CONTROL);
  });

  it("escapes the service and model headings of the rates tables", () => {
    const rendered = renderRates([
      ratesRow("\u001b]0;owned\u0007", null),
      ratesRow("svc", "\u009b31m\u202e"),
    ]);
    for (const line of rendered.split("\n")) expect(line).not.toMatch(RAW_CONTROL);
    expect(rendered).toContain("\\x1b]0;owned\\x07 (all models)");
    expect(rendered).toContain("svc (model \\x9b31m\\u202e)");
  });

  it("heads the overflow series' table (other models), apart from a model a client named so", () => {
    const rendered = renderRates([
      ratesRow("svc-a", "(other models)", "other"),
      ratesRow("svc-b", "(other models)"),
    ]);
    expect(rendered).toContain("svc-a (other models)");
    expect(rendered).toContain("svc-b (model (other models))");
  });

  it("writes JSON lines with no raw control character, which parse back to the same value", () => {
    for (const name of HOSTILE) {
      const line = jsonLine({ service: name, nested: [name] });
      expect(line, JSON.stringify(name)).not.toMatch(RAW_CONTROL);
      expect(JSON.parse(line)).toEqual({ service: name, nested: [name] });
    }
  });
});
