// Merges vitest JSON reports (one per project run: deploy/test.sh runs unit and
// integration side by side) into one, written to OUT, and prints one closing
// line: "tests: N passed, N failed, N skipped"; exits 1 when a report is missing or no test ran.
// Usage: node deploy/test-summary.mjs OUT REPORT... (a single REPORT may be OUT itself).
import { existsSync, readFileSync, writeFileSync } from 'node:fs';

const [out, ...inputs] = process.argv.slice(2);
if (!out || inputs.length === 0) {
  console.error('usage: node deploy/test-summary.mjs OUT REPORT...');
  process.exit(2);
}
const reports = [];
const missing = [];
for (const path of inputs) {
  const text = existsSync(path) ? readFileSync(path, 'utf8') : '';
  if (text.trim() === '') missing.push(path);
  else reports.push(JSON.parse(text));
}
const COUNTS = [
  'numTotalTestSuites', 'numPassedTestSuites', 'numFailedTestSuites', 'numPendingTestSuites',
  'numTotalTests', 'numPassedTests', 'numFailedTests', 'numPendingTests', 'numTodoTests',
];
const merged = { ...reports[0], testResults: [] };
for (const k of COUNTS) merged[k] = 0;
for (const r of reports) {
  for (const k of COUNTS) merged[k] += r[k] ?? 0;
  merged.testResults.push(...(r.testResults ?? []));
}
merged.startTime = Math.min(...reports.map((r) => r.startTime ?? Date.now()));
merged.success = missing.length === 0 && reports.every((r) => r.success !== false);
if (reports.length > 0) writeFileSync(out, JSON.stringify(merged));
const skipped = merged.numPendingTests + merged.numTodoTests;
const noReport = missing.length ? ` (no report from ${missing.length} run(s): ${missing.join(', ')})` : '';
console.log(`tests: ${merged.numPassedTests} passed, ${merged.numFailedTests} failed, ${skipped} skipped${noReport}`);
// Exit status: 1 when a run left no report or nothing ran at all (a filter that matched no file).
process.exit(missing.length > 0 || merged.numTotalTests === 0 ? 1 : 0);
