import type { Command } from 'commander';
import { adminCommand, call, withManager } from '../admin.js';
import { emit, printTable } from '../output.js';
import { formatSize } from '../../shared/units.js';

export function registerStatusCommand(program: Command): void {
  adminCommand(program, 'status', 'cluster summary: servers, disks, capacity, volumes')
    .action((o) => withManager(o, async (m) => {
      const s = await call(m, 'Status', {});
      emit(o, s, () => {
        const out = process.stdout;
        out.write(`servers: ${s.serversActive}/${s.servers} active   disks: ${s.disksActive}/${s.disks} active   heads: ${s.heads}\n`);
        out.write(`capacity: ${formatSize(s.capacityBytes)}   allocated: ${formatSize(s.usedBytes)} (${s.capacityBytes ? ((100 * s.usedBytes) / s.capacityBytes).toFixed(1) : '0.0'}%)\n`);
        out.write(`volumes: ${s.volumes}\n`);
        if (s.volumeList.length > 0) {
          printTable(s.volumeList.map((v) => ({ ...v, size: formatSize(v.size) })),
            { name: 'VOLUME', size: 'SIZE', replicas: 'K', state: 'STATE', attachedHead: 'HEAD', nbdUri: 'NBD' });
        }
      });
    }));
}
