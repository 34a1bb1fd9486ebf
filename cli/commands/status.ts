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
        const degraded = s.volumeList.filter((v) => v.degraded);
        out.write(`volumes: ${s.volumes}${degraded.length ? `   DEGRADED: ${degraded.map((v) => `${v.name} (${v.resyncs} resync(s), ${(100 * v.resyncProgress).toFixed(0)}%)`).join(', ')}` : '   all fully redundant'}\n`);
        if (s.volumeList.length > 0) {
          printTable(s.volumeList.map((v) => ({ ...v, size: formatSize(v.size), health: v.degraded ? `degraded ${(100 * v.resyncProgress).toFixed(0)}%` : 'ok' })),
            { name: 'VOLUME', size: 'SIZE', replicas: 'K', health: 'HEALTH', state: 'STATE', attachedHead: 'HEAD', nbdUri: 'NBD' });
        }
      });
    }));
}
