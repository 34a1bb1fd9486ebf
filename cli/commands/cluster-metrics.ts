import { resolve } from 'node:path';
import type { Command } from 'commander';
import { readMetricsState, writeMetricsState, type MetricsEndpoint } from '../../deploy/metrics-targets.js';
import type { LocalCluster } from '../../deploy/local-cluster.js';
import { emit, printTable, reportError } from '../output.js';

// `vsky cluster metrics`: where a local cluster's daemons serve Prometheus
// metrics (recorded by `vsky cluster up` in DIR/metrics.json), and the
// file_sd target list for deploy/prometheus/prometheus.yml.

/** `vsky cluster up`: records the endpoints in DIR and prints them. */
export function announceMetrics(c: LocalCluster, dir: string, out: NodeJS.WritableStream): void {
  const endpoints = c.metricsEndpoints;
  if (endpoints.length === 0) return;
  const { fileSd } = writeMetricsState(dir, endpoints);
  out.write('  Prometheus metrics:\n');
  for (const e of endpoints) out.write(`    ${e.daemon.padEnd(9)} ${e.url}\n`);
  out.write(`  Prometheus targets (file_sd) in ${fileSd}; see docs/metrics.md\n`);
}

export function registerClusterMetricsCommand(cluster: Command): void {
  cluster.command('metrics')
    .description('print where the daemons of a cluster started with `vsky cluster up` serve Prometheus metrics')
    .option('--dir <dir>', 'the cluster\'s directory (as given to `vsky cluster up`)', '.vsky')
    .option('--json', 'print JSON')
    .action((o: { dir: string; json?: boolean }) => {
      let endpoints: MetricsEndpoint[];
      try {
        endpoints = readMetricsState(resolve(o.dir));
      } catch (err) {
        reportError(err, o.json);
        return;
      }
      emit(o, { endpoints }, () => printTable(endpoints.map((e) => ({ ...e })), { daemon: 'DAEMON', role: 'ROLE', url: 'METRICS URL' }));
    });
}
