import { CorruptMetadataError } from '../../shared/errors.js';
import { moduleLogger } from '../../shared/logger.js';
import { ManagerStore } from '../store.js';
import type { RebuildPlan } from './plan.js';

// The second half of a rebuild from storage: the plan (manager/rebuild/plan.ts)
// written into a manager database that must be empty, in one atomic batch,
// under the cluster id the disks carry. The manager then starts on it as on
// any database: heads register and claim the leases they hold
// (manager/leases.ts adopts them), stale replicas are resynced, chunks of an
// interrupted create are freed from the to-free list.

const log = moduleLogger('manager.rebuild');

/** Refuses a database that holds anything but its format marker and cluster id: a rebuild never merges. */
export async function assertEmpty(store: ManagerStore): Promise<void> {
  const snap = await store.load();
  const held = snap.servers.length + snap.disks.length + snap.volumes.length + snap.heads.length + snap.pending.length;
  if (held > 0) {
    throw new CorruptMetadataError(`the manager database ${store.path} is not empty (${snap.servers.length} servers, ${snap.volumes.length} volumes): `
      + '--rebuild-from-storage only writes into an empty data directory; move this one away first', { path: store.path });
  }
}

export async function applyPlan(dataDir: string, clusterId: string, plan: RebuildPlan): Promise<void> {
  const store = await ManagerStore.open(dataDir);
  try {
    await assertEmpty(store);
    if (clusterId) await store.adoptClusterId(clusterId);
    const batch = store.batch();
    for (const s of plan.servers) batch.putServer(s);
    for (const d of plan.disks) batch.putDisk(d);
    // Holders are not on storage: a head still holding a volume claims it with its heartbeat (manager/leases.ts).
    for (const { volume, map } of plan.volumes) batch.putVolume({ ...volume, claimPending: true }).putChunkMap(map);
    for (const t of plan.toFree) batch.putToFree(t);
    for (const j of plan.jobs) batch.putJob(j);
    for (const a of plan.setAside) batch.putSetAside(a);
    batch.putNextVolumeId(plan.nextVolumeId);
    // VastSky ids: the records carry the claims (adopted by the manager's first id pass); the counters start where the nodes last heard them.
    for (const [space, next] of Object.entries(plan.nextIntIds)) if (next > 0) batch.putNextIntId(space, next);
    // Resync ids ("r<n>") the lost database handed out may still be running on executors, which report progress
    // by id: number ours from now (in ms), above any counter a previous database could have reached.
    batch.putNextResyncId(Date.now());
    await store.write(batch);
    log.warn({ ...plan.report, rolledBack: plan.report.rolledBack.length, conflicts: plan.report.conflicts.length, clusterId },
      `manager database rebuilt from storage: ${plan.report.volumes} volumes, ${plan.report.chunks} chunks, ${plan.report.staleReplicas} stale replicas to resync`);
    for (const r of plan.report.rolledBack) log.warn(r, 'interrupted create rolled back: its chunks are freed');
    for (const c of plan.report.conflicts) log.error({ conflict: c }, 'left for an admin: not placed, not freed');
    for (const a of plan.setAside) log.error(a, 'chunk set aside for an admin: never freed nor given to another volume');
  } finally {
    await store.close();
  }
}
