import type { Registry } from 'prom-client';
import { collectedGauge, countByState, stateSamples, type Sample } from '../shared/metrics/families.js';
import type { ManagerCore } from './core.js';
import type { JobState } from './jobs/records.js';
import type { LeaseState } from './leases.js';
import { allocatedSegments, type ChunkMapRecord, type DiskState, HeadState, ResyncState, ServerState } from './types.js';

// The manager's Prometheus metrics (docs/metrics.md): the cluster as the
// manager sees it, computed from its in-memory state at scrape time (no
// LevelDB reads). API call latency is in api-metrics.ts.

const SERVER_STATES: readonly ServerState[] = ['active', 'failed', 'removed'];
const DISK_STATES: readonly DiskState[] = ['active', 'failed', 'removed'];
const HEAD_STATES: readonly HeadState[] = ['active', 'failed'];
const RESYNC_STATES: readonly ResyncState[] = ['running', 'queued'];
const JOB_STATES: readonly JobState[] = ['pending', 'running', 'aborting', 'aborted', 'succeeded', 'failed', 'fenced'];
const LEASE_STATES: readonly LeaseState[] = ['held', 'expired', 'free'];

/** Segments of a volume with a replica stale or being resynced. */
export function degradedSegments(map: ChunkMapRecord): number {
  const segments = new Set<number>();
  for (const r of map.stale ?? []) segments.add(Math.floor(r / map.replicas));
  for (const r of map.resyncing ?? []) segments.add(Math.floor(r / map.replicas));
  return segments.size;
}

type Rows<L extends string> = () => Sample<L>[];

export function registerManagerMetrics(registry: Registry, core: ManagerCore): void {
  const { registry: reg, volumes, resyncs, leases } = core;
  const gauge = <L extends string>(name: string, help: string, labelNames: readonly L[], read: Rows<L>): void => {
    collectedGauge(registry, { name, help, labelNames, read });
  };
  gauge('vsky_manager_servers', 'Storage servers by state.', ['state'], () => countByState('state', SERVER_STATES, reg.listServers().map((s) => s.state)));
  gauge('vsky_manager_disks', 'Physical disks by state.', ['state'], () => countByState('state', DISK_STATES, reg.listDisks().map((d) => d.state)));
  gauge('vsky_manager_heads', 'Head agents by state.', ['state'], () => countByState('state', HEAD_STATES, reg.listHeads().map((h) => h.state)));
  gauge('vsky_manager_disk_state', 'Each disk\'s state: 1 for the current one, 0 for the others (removed disks are left out).', ['disk', 'server', 'state'], () =>
    reg.listDisks().filter((d) => d.state !== 'removed')
      .flatMap((d) => stateSamples<'disk' | 'server' | 'state'>({ disk: d.id, server: reg.server(d.serverId)?.name ?? d.serverId }, 'state', DISK_STATES, d.state)));
  gauge('vsky_manager_capacity_bytes', 'Capacity of the pool: every disk not removed, failed ones included (as `vsky status`).', [], () => [{ labels: {}, value: core.status().capacityBytes }]);
  gauge('vsky_manager_allocated_bytes', 'Bytes of the pool allocated to volumes (chunks in use).', [], () => [{ labels: {}, value: core.status().usedBytes }]);
  gauge('vsky_manager_volumes', 'Volumes.', [], () => [{ labels: {}, value: volumes.list().length }]);
  gauge('vsky_manager_provisioned_bytes', 'Raw bytes (every replica) the volumes promise; above the capacity the pool is overcommitted (thin volumes).', [], () =>
    [{ labels: {}, value: core.status().provisionedBytes }]);
  gauge('vsky_manager_volume_allocated_bytes', 'Bytes of the volume with chunks (allocated segments x chunk size, one copy; thick volumes: their size).', ['volume'], () =>
    [...volumes.entries()].map((e) => ({ labels: { volume: e.volume.name }, value: Math.min(allocatedSegments(e.map) * e.volume.chunkSize, e.volume.size) })));
  gauge('vsky_manager_volume_degraded_segments', 'Segments of the volume with fewer in-sync replicas than it should have (a replica stale or resyncing).', ['volume'], () =>
    [...volumes.entries()].map((e) => ({ labels: { volume: e.volume.name }, value: degradedSegments(e.map) })));
  gauge('vsky_manager_degraded_segments', 'Segments of all volumes with a replica stale or resyncing.', [], () => {
    let n = 0;
    for (const e of volumes.entries()) n += degradedSegments(e.map);
    return [{ labels: {}, value: n }];
  });
  gauge('vsky_manager_resyncs', 'Resyncs (rebuilds and drain copies) by state: running on an executor, or queued for a disk slot.', ['state'], () =>
    countByState('state', RESYNC_STATES, resyncs.book.all().map((r) => r.state)));
  gauge('vsky_manager_resync_bytes_remaining', 'Bytes the resyncs still have to copy, by state (a resync\'s written bytes when a source told them, else its whole chunk, less what was copied).', ['state'], () => {
    const left = new Map<string, number>(RESYNC_STATES.map((s) => [s, 0]));
    for (const r of resyncs.book.all()) {
      const total = resyncs.runtimeOf(r.id)?.bytesExpected ?? volumes.byVolumeId(r.volumeId)?.volume.chunkSize ?? 0;
      left.set(r.state, (left.get(r.state) ?? 0) + Math.max(0, total - r.bytesCopied));
    }
    return [...left].map(([state, value]) => ({ labels: { state }, value }));
  });
  gauge('vsky_manager_jobs', 'Storage jobs (wipe, resize) by state.', ['state'], () => countByState('state', JOB_STATES, core.jobs.list().map((j) => j.state)));
  gauge('vsky_manager_leases', 'Volumes by write-lease state: held (the holder heartbeats), expired (the holder went silent past the TTL), free (not attached).', ['state'], () =>
    countByState('state', LEASE_STATES, volumes.list().map((v) => leases.state(v).lease)));
  gauge('vsky_manager_head_leases_held', 'Write leases each head holds (its name); heads holding none show 0.', ['head'], () => {
    const held = new Map<string, number>(reg.listHeads().map((h) => [h.id, 0]));
    for (const v of volumes.list()) if (v.attachedHead && leases.state(v).lease === 'held') held.set(v.attachedHead, (held.get(v.attachedHead) ?? 0) + 1);
    return [...held].map(([id, value]) => ({ labels: { head: reg.head(id)?.name ?? id }, value }));
  });
}
