import { IoError, StaleEpochError, errorMessage } from '../../shared/errors.js';
import { LinearVolume } from '../engine/linear-volume.js';
import { Mirror, MutationTracker, rejectOnReplicaFailure } from '../engine/mirror.js';
import type { NodePool } from '../engine/node-pool.js';
import { Replica, type ReplicaState } from '../engine/replica.js';
import { validateMap, type VolumeMap } from '../attachments.js';

// A volume a storage job opens on this head (head-agent/jobs/job-host.ts): the
// same I/O engine as an attached volume (LinearVolume over mirrors over the
// data protocol), but internal: never registered, never exported, no
// write-intent (the job's volume is DIRTY until its final compare-and-set, so
// nothing needs reconciling), and any replica failure fails the request (the
// job fails; it does not degrade a replica set: only the manager changes one).
// A target is fenced with the job's epoch on every node before any write; a
// source is read only, under the epoch the manager gave (reads are not
// epoch-checked, so opening it changes nothing on the nodes).

export interface JobVolumeOptions {
  pool: NodePool;
  map: VolumeMap;
  epoch: number;
  /** Fence every replica node with `epoch` (the target) before returning. */
  fence: boolean;
}

export async function openJobVolume(opts: JobVolumeOptions): Promise<LinearVolume> {
  const { map, epoch, pool } = opts;
  validateMap(map, epoch);
  const tracker = new MutationTracker();
  const segments = [...map.segments].sort((a, b) => a.index - b.index).map((seg) => {
    const replicas = [...seg.replicas].sort((a, b) => a.slot - b.slot).map((loc) => new Replica(pool.get(loc.dataAddress), {
      volumeId: map.volumeId, volumeName: map.name, segment: seg.index, slot: loc.slot,
      state: (loc.state || 'in_sync') as ReplicaState, serverId: loc.serverId, diskId: loc.diskId,
      chunkIndex: loc.chunkIndex, controlAddress: loc.controlAddress ?? '',
    }));
    return new Mirror(map.name, seg.index, replicas, rejectOnReplicaFailure, tracker);
  });
  if (opts.fence) await fenceNodes(map, segments, epoch);
  return new LinearVolume({
    name: map.name, volumeId: map.volumeId, size: map.size, chunkSize: map.chunkSize,
    epoch, generation: map.generation, segments, tracker, intentGroupBytes: 0, thin: map.thin === true,
  });
}

/** FENCE once per node holding a replica; every node must take it (a newer epoch there: the job was fenced). */
async function fenceNodes(map: VolumeMap, segments: Mirror[], epoch: number): Promise<void> {
  const byNode = new Map<string, Replica>();
  for (const m of segments) for (const r of m.replicas) if (!byNode.has(r.address)) byNode.set(r.address, r);
  const list = [...byNode.values()];
  const results = await Promise.allSettled(list.map((r) => r.fence(epoch, map.generation)));
  const failed = results.map((r, i) => ({ r, replica: list[i]! })).filter((x) => x.r.status === 'rejected');
  if (failed.length === 0) return;
  const reason = (failed[0]!.r as PromiseRejectedResult).reason;
  const detail = failed.map((f) => `${f.replica.describe()}: ${errorMessage((f.r as PromiseRejectedResult).reason)}`).join('; ');
  if (failed.some((f) => (f.r as PromiseRejectedResult).reason instanceof StaleEpochError)) {
    throw new StaleEpochError(`volume ${map.name}: a node refused the job's epoch ${epoch} (fenced: the job was taken over): ${detail}`, { volume: map.name, epoch });
  }
  throw new IoError(`volume ${map.name}: ${failed.length} node(s) could not be fenced with the job's epoch ${epoch}: ${detail}`, { volume: map.name, epoch }, { cause: reason });
}
