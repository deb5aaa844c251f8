/**
 * The seed's quick start, as the README writes it ("The library"), with the connection string taken from
 * DATABASE_URL when set. Run it with `npm run example:quickstart` (tsx resolves the package's own
 * name to its sources through tsconfig.json's `paths`; an installed package resolves to `dist/`).
 */
import { instrument } from "mcp-observatory";
import { PostgresExporter } from "mcp-observatory/exporters/postgres";

const exporter = new PostgresExporter(process.env.DATABASE_URL ?? "postgresql://user:pass@localhost/mcp");
const interceptor = instrument({ serviceName: "example-mcp", exporter });

await interceptor.interceptModelCall({
  model: "gpt-4o", prompt: "Hello MCP", response: "Hello human",
  confidence: 0.64, confidenceGateThreshold: 0.70, highRiskPath: true,
  deterministicFallbackTriggered: true, promptDiffScore: 0.42,
  shadowAgreement: false, isGoldenFinancialScenario: true, goldenScenarioPassed: true,
});
console.log(interceptor.getMetricsSnapshot());
console.log(interceptor.getActiveAlerts());
