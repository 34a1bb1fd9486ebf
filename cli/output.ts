import { VskyError, errorMessage } from '../shared/errors.js';

// How admin commands talk to people and scripts: aligned tables for humans,
// one JSON document for --json, and errors that name the problem and the fix
// on stderr with a non-zero exit code.

export interface OutputOptions { json?: boolean }

export function printJson(value: unknown): void {
  process.stdout.write(`${JSON.stringify(value, null, 2)}\n`);
}

/** Prints rows as an aligned table with the given columns (key -> header). */
export function printTable(rows: Record<string, unknown>[], columns: Record<string, string>): void {
  const keys = Object.keys(columns);
  const cells = rows.map((r) => keys.map((k) => formatCell(r[k])));
  const headers = keys.map((k) => columns[k]!);
  const widths = headers.map((h, i) => Math.max(h.length, ...cells.map((c) => c[i]!.length)));
  const line = (parts: string[]): string => parts.map((p, i) => p.padEnd(widths[i]!)).join('  ').trimEnd();
  process.stdout.write(`${line(headers)}\n`);
  for (const c of cells) process.stdout.write(`${line(c)}\n`);
  if (rows.length === 0) process.stdout.write('(none)\n');
}

function formatCell(v: unknown): string {
  if (v === undefined || v === null || v === '') return '-';
  if (typeof v === 'object') return Object.entries(v as Record<string, unknown>).map(([k, x]) => `${k}=${String(x)}`).join(',') || '-';
  return String(v);
}

/** Either prints JSON or runs the human printer. */
export function emit(opts: OutputOptions, value: unknown, human: () => void): void {
  if (opts.json) printJson(value);
  else human();
}

const HINTS: Record<string, string> = {
  ETRANSPORT: 'is the manager running? Start a local cluster with `vsky cluster up`, or point at one with --manager HOST:PORT. '
    + 'A TLS mismatch looks the same: the certificate (--tls-dir/--tls-name) must come from the cluster\'s CA, and --insecure '
    + 'only reaches a cluster running without TLS (docs/security.md)',
  ETIMEDOUT: 'the manager did not answer in time; check `vsky status` and the manager log',
};

/** Prints an error for a person (or as JSON) and sets a non-zero exit code; with the request id to look for in the daemons' logs when there was a call. */
export function reportError(err: unknown, json = false, requestId?: string): void {
  const code = err instanceof VskyError ? err.code : 'EINTERNAL';
  const hint = HINTS[code];
  if (json) {
    process.stderr.write(`${JSON.stringify({ error: { code, message: errorMessage(err), hint, requestId } })}\n`);
  } else {
    const idLine = requestId ? `\n  request id: ${requestId} (in the daemons' logs as "reqId")` : '';
    process.stderr.write(`vsky: error: ${errorMessage(err)}${hint ? `\n  hint: ${hint}` : ''}${idLine}\n`);
  }
  process.exitCode = code === 'EINVAL' ? 2 : 1;
}
