import type { Command } from 'commander';
import cliProgress from 'cli-progress';
import { adminCommand, call, withManager } from '../admin.js';
import { emit, printTable } from '../output.js';
import { intArg } from '../options.js';
import { formatSize } from '../../shared/units.js';
import type { ManagerClient } from '../../shared/grpc.js';

// Resyncs in progress: a table (list) or live progress bars with rate and ETA
// (watch), per resync and for the whole cluster.

type ResyncList = Awaited<ReturnType<typeof fetchResyncs>>;

function fetchResyncs(m: ManagerClient) {
  return call(m, 'ListResyncs', {});
}

function pct(done: number, total: number): string {
  return total > 0 ? `${((100 * done) / total).toFixed(1)}%` : '-';
}

function rows(list: ResyncList): Record<string, unknown>[] {
  return list.resyncs.map((r) => ({
    ...r, where: `seg ${r.segment} slot ${r.slot}`, progress: pct(r.regionsDone, r.regionsTotal),
    rate: r.rateMibps ? `${r.rateMibps.toFixed(1)} MiB/s` : '-', copied: formatSize(r.bytesCopied),
  }));
}

export function registerResyncCommands(program: Command): void {
  const resync = program.command('resync').description('rebuilds of lost replicas: list, watch');

  adminCommand(resync, 'list', 'list queued and running resyncs').action((o) => withManager(o, async (m) => {
    const list = await fetchResyncs(m);
    emit(o, list, () => {
      printTable(rows(list), { volume: 'VOLUME', where: 'SEGMENT', kind: 'KIND', state: 'STATE', goodCopies: 'GOOD', executor: 'BY', sourceDisks: 'FROM', targetDisk: 'TO', progress: 'DONE', copied: 'COPIED', rate: 'RATE' });
      process.stdout.write(`total: ${formatSize(list.bytesCopied)} of ${formatSize(list.bytesTotal)} copied (${pct(list.bytesCopied, list.bytesTotal)})\n`);
    });
  }));

  adminCommand(resync, 'watch', 'show resync progress bars until every volume is fully redundant')
    .option('--interval <ms>', 'refresh period', intArg, 1000)
    .action((o) => withManager(o, async (m) => {
      if (o.json) { // one JSON document per refresh, one per line, for scripts
        for (;;) {
          const list = await fetchResyncs(m);
          process.stdout.write(`${JSON.stringify(list)}\n`);
          if (list.resyncs.length === 0) return;
          await new Promise((r) => setTimeout(r, o.interval));
        }
      }
      // Nothing to watch: say so (no empty progress bars).
      if ((await fetchResyncs(m)).resyncs.length === 0) {
        process.stdout.write('no resync running: every volume is fully redundant\n');
        return;
      }
      const bars = new cliProgress.MultiBar({
        format: ' {name} |{bar}| {percentage}% | {rate} | ETA {eta_formatted}', hideCursor: true, clearOnComplete: false,
      }, cliProgress.Presets.shades_classic);
      const byId = new Map<string, cliProgress.SingleBar>();
      const total = bars.create(1, 0, { name: 'cluster total'.padEnd(28), rate: '' });
      try {
        for (;;) {
          const list = await fetchResyncs(m);
          total.setTotal(Math.max(1, list.bytesTotal));
          total.update(list.bytesCopied, { rate: formatSize(list.bytesCopied) });
          for (const r of list.resyncs) {
            let bar = byId.get(r.resyncId);
            if (!bar) {
              bar = bars.create(Math.max(1, r.regionsTotal), 0, { name: `${r.volume} seg ${r.segment} slot ${r.slot}`.padEnd(28), rate: '' });
              byId.set(r.resyncId, bar);
            }
            bar.setTotal(Math.max(1, r.regionsTotal));
            bar.update(r.regionsDone, { rate: r.state === 'running' ? `${r.rateMibps.toFixed(1)} MiB/s` : r.state });
          }
          for (const [id, bar] of byId) {
            if (!list.resyncs.some((r) => r.resyncId === id)) { bar.update(bar.getTotal(), { rate: 'done' }); byId.delete(id); }
          }
          if (list.resyncs.length === 0) break;
          await new Promise((r) => setTimeout(r, o.interval));
        }
      } finally {
        bars.stop();
      }
      process.stdout.write('every volume is fully redundant\n');
    }));
}
