import type { Command } from 'commander';
import { adminCommand, call, withManager } from '../admin.js';
import { emit, printTable } from '../output.js';
import { formatSize } from '../../shared/units.js';

export function registerStatusCommand(program: Command): void {
  adminCommand(program, 'status', 'cluster summary: servers, disks, capacity, volumes, degraded volumes and drains')
    .action((o) => withManager(o, async (m) => {
      const s = await call(m, 'Status', {});
      const draining = (await call(m, 'ListDisks', { server: '' })).disks.filter((d) => d.draining)
        .map((d) => ({ diskId: d.diskId, serverName: d.serverName, chunksLeft: d.usedChunks, note: d.drainNote }));
      emit(o, { ...s, drainingDisks: draining }, () => {
        const out = process.stdout;
        out.write(`servers: ${s.serversActive}/${s.servers} active   disks: ${s.disksActive}/${s.disks} active   heads: ${s.heads}\n`);
        out.write(`capacity: ${formatSize(s.capacityBytes)}   allocated: ${formatSize(s.usedBytes)} (${s.capacityBytes ? ((100 * s.usedBytes) / s.capacityBytes).toFixed(1) : '0.0'}%)\n`);
        const level = s.poolLevel === 'ok' ? 'ok' : `${s.poolLevel.toUpperCase()} (above ${Math.round(100 * (s.poolLevel === 'critical' ? s.poolCritical : s.poolWarn))}%: thin volumes fail first writes with ENOSPC when the pool is full)`;
        out.write(`pool: ${(100 * s.poolUsedFraction).toFixed(1)}% used, ${level}   provisioned: ${formatSize(s.provisionedBytes)}   `
          + `volumes allocated: ${formatSize(s.allocatedBytes)}   overcommit: ${s.overcommit.toFixed(2)}x (raw bytes, every replica)\n`);
        const degraded = s.volumeList.filter((v) => v.degraded);
        out.write(`volumes: ${s.volumes}${degraded.length ? `   DEGRADED: ${degraded.map((v) => `${v.name} (${v.resyncs} resync(s), ${(100 * v.resyncProgress).toFixed(0)}%)`).join(', ')}` : '   all fully redundant'}\n`);
        for (const d of draining) {
          out.write(`draining: disk ${d.diskId} on ${d.serverName}, ${d.chunksLeft} chunk(s) left${d.note ? ` - waiting: ${d.note}` : ''}\n`);
        }
        if (s.volumeList.length > 0) {
          printTable(s.volumeList.map((v) => ({ ...v, size: formatSize(v.size), health: v.degraded ? `degraded ${(100 * v.resyncProgress).toFixed(0)}%` : 'ok',
            allocated: v.thin ? `${formatSize(v.allocatedBytes)} thin` : 'thick' })),
            { name: 'VOLUME', size: 'SIZE', allocated: 'ALLOCATED', replicas: 'K', health: 'HEALTH', state: 'STATE', attachedHead: 'HEAD', nbdUri: 'NBD' });
        }
      });
    }));
}
