import type { Command } from 'commander';
import { adminCommand, call, withManager } from '../admin.js';
import { emit, printTable } from '../output.js';
import { intArg, sizeArg } from '../options.js';
import { waitForDrain } from '../drain-progress.js';
import { formatSize } from '../../shared/units.js';

export function registerDiskCommands(program: Command): void {
  const disk = program.command('disk').description('physical disks: list, add, remove');

  adminCommand(disk, 'list', 'list disks with their usage (and drains in progress)')
    .option('--server <server>', 'only disks of this server (id or name)')
    .action((o) => withManager(o, async (m) => {
      const { disks } = await call(m, 'ListDisks', { server: o.server ?? '' });
      emit(o, disks, () => printTable(disks.map((d) => ({
        ...d, capacity: formatSize(d.chunkSize * d.chunkCount), used: `${d.usedChunks}/${d.chunkCount}`,
        state: (d.draining ? `${d.state},draining` : d.state) + (d.badChunks > 0 ? `,${d.badChunks} bad` : ''),
      })), { diskId: 'ID', serverName: 'SERVER', path: 'PATH', state: 'STATE', capacity: 'CAPACITY', used: 'CHUNKS USED', pdskid: 'PDSKID', drainNote: 'NOTE' }));
    }));

  adminCommand(disk, 'add', 'add a disk (file or block device) to a storage server')
    .argument('<server>', 'server id or name')
    .argument('<path>', 'path on that server; a missing file is created sparse')
    .option('--size <size>', 'size of the file to create, e.g. 10G', sizeArg)
    .action((server: string, path: string, o) => withManager(o, async (m) => {
      const d = await call(m, 'AddDisk', { server, path, size: o.size ?? 0 }, 60_000);
      emit(o, d, () => process.stdout.write(`added disk ${d.diskId} on ${d.serverName}: ${d.chunkCount} chunks of ${formatSize(d.chunkSize)}\n`));
    }));

  adminCommand(disk, 'fail', 'report a disk as gone (for hardware health checkers): its replicas are rebuilt elsewhere')
    .argument('<disk-id>', 'disk id (see `vsky disk list`)')
    .option('--reason <text>', 'why, for the log', 'reported by an administrator')
    .action((id: string, o) => withManager(o, async (m) => {
      await call(m, 'FailDisk', { diskId: id, reason: o.reason });
      emit(o, { failed: id }, () => process.stdout.write(`disk ${id} marked failed; watch the rebuild with \`vsky resync watch\`\n`));
    }));

  adminCommand(disk, 'remove', 'remove a disk: its replicas are first copied elsewhere (drain), keeping full redundancy')
    .argument('<disk-id>', 'disk id (see `vsky disk list`)')
    .option('--no-wait', 'return once the drain has started (watch it with `vsky disk list`)')
    .option('--interval <ms>', 'progress refresh period while waiting', intArg, 1000)
    .option('--force', 'remove at once even if it holds chunks: its replicas are lost and rebuilt elsewhere (less redundancy meanwhile)')
    .action((id: string, o) => withManager(o, async (m) => {
      let d = await call(m, 'RemoveDisk', { diskId: id, force: Boolean(o.force) });
      if (d.draining && !o.json) process.stdout.write(`draining disk ${id}: ${d.usedChunks} chunk(s) are copied elsewhere first; \`vsky disk add ${d.serverName} ${d.path}\` cancels\n`);
      if (d.draining && o.wait) [d] = await waitForDrain(m, { diskIds: [id], label: `disk ${id}`, intervalMs: o.interval, quiet: Boolean(o.json) });
      emit(o, d, () => process.stdout.write(d.state === 'removed' ? `removed disk ${id}\n` : `disk ${id} is draining; it is removed once empty (see \`vsky disk list\`)\n`));
    }));
}
