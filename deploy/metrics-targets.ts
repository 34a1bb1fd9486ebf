import { existsSync, mkdirSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { InvalidArgumentError, NotFoundError } from '../shared/errors.js';
import type { DaemonProcess } from './daemon-process.js';

// Where a local cluster's daemons serve Prometheus metrics: each daemon is
// started with `--metrics-listen HOST:0` (a port the kernel picks; no race
// with other clusters), reports the URL in its "ready" line, and is pinned to
// that port for restarts. `vsky cluster up` keeps the list in
// DIR/metrics.json (what `vsky cluster metrics` prints) and writes
// DIR/prometheus/targets.json, a file_sd target list for
// deploy/prometheus/prometheus.yml.

export type DaemonRole = 'manager' | 'storage-node' | 'head-agent';

export interface MetricsEndpoint {
  /** Daemon name: manager, node1.., head1... */
  daemon: string;
  role: DaemonRole;
  /** http://HOST:PORT/metrics */
  url: string;
}

export const METRICS_STATE_FILE = 'metrics.json';
export const FILE_SD_FILE = join('prometheus', 'targets.json');

/** `--metrics-listen HOST:0` for a daemon on `host`. */
export function metricsArgs(host: string): string[] {
  return ['--metrics-listen', `${host}:0`];
}

/** After a start: the daemon's metrics URL (from its ready line), its --metrics-listen pinned to the bound port. */
export function pinMetricsPort(d: DaemonProcess): string {
  const url = typeof d.ready.metricsUrl === 'string' ? d.ready.metricsUrl : '';
  const i = d.args.indexOf('--metrics-listen');
  if (url && i >= 0) d.args[i + 1] = new URL(url).host;
  return url;
}

/** file_sd_configs JSON: one group per daemon, labelled with its role and name. */
export function fileSdTargets(endpoints: readonly MetricsEndpoint[]): object[] {
  return endpoints.map((e) => ({ targets: [new URL(e.url).host], labels: { role: e.role, daemon: e.daemon } }));
}

function writeAtomically(path: string, text: string): void {
  mkdirSync(dirname(path), { recursive: true });
  writeFileSync(`${path}.tmp`, text);
  renameSync(`${path}.tmp`, path);
}

/** Writes DIR/metrics.json and DIR/prometheus/targets.json; returns their paths. */
export function writeMetricsState(dir: string, endpoints: readonly MetricsEndpoint[]): { state: string; fileSd: string } {
  const state = join(dir, METRICS_STATE_FILE);
  const fileSd = join(dir, FILE_SD_FILE);
  writeAtomically(state, `${JSON.stringify({ endpoints }, null, 2)}\n`);
  writeAtomically(fileSd, `${JSON.stringify(fileSdTargets(endpoints), null, 2)}\n`);
  return { state, fileSd };
}

/** The endpoints `vsky cluster up` recorded in DIR. */
export function readMetricsState(dir: string): MetricsEndpoint[] {
  const path = join(dir, METRICS_STATE_FILE);
  if (!existsSync(path)) {
    throw new NotFoundError(`${path} does not exist: start the cluster with \`vsky cluster up --dir ${dir}\` (it records its metrics endpoints there)`, { path });
  }
  let parsed: unknown;
  try {
    parsed = JSON.parse(readFileSync(path, 'utf8'));
  } catch (err) {
    throw new InvalidArgumentError(`${path} is not valid JSON: ${(err as Error).message}`, { path });
  }
  const endpoints = (parsed as { endpoints?: unknown }).endpoints;
  if (!Array.isArray(endpoints) || !endpoints.every((e) => typeof e?.daemon === 'string' && typeof e?.url === 'string' && typeof e?.role === 'string')) {
    throw new InvalidArgumentError(`${path} has no valid "endpoints" list; restart the cluster with \`vsky cluster up\` to rewrite it`, { path });
  }
  return endpoints as MetricsEndpoint[];
}
