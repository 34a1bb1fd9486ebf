import { Mirror, type MutationTracker, type ReplicaFailureHandler } from '../engine/mirror.js';
import type { NodePool } from '../engine/node-pool.js';
import { Replica } from '../engine/replica.js';
import { replicaState, type VolumeMap } from './validate-map.js';

// Builds a volume's mirrors (one per segment) and replicas from the manager's map.

export type ReplicaLocation = VolumeMap['segments'][number]['replicas'][number];

export function newReplica(pool: NodePool, map: Pick<VolumeMap, 'volumeId' | 'name'>, segment: number, loc: ReplicaLocation): Replica {
  return new Replica(pool.get(loc.dataAddress), {
    volumeId: map.volumeId, volumeName: map.name, segment, slot: loc.slot,
    state: replicaState(loc.state), serverId: loc.serverId, diskId: loc.diskId,
    chunkIndex: loc.chunkIndex, controlAddress: loc.controlAddress ?? '',
  });
}

export function buildSegments(pool: NodePool, failureHandler: ReplicaFailureHandler, map: VolumeMap, tracker: MutationTracker): Mirror[] {
  const bySegment = [...map.segments].sort((a, b) => a.index - b.index);
  return bySegment.map((seg) => {
    const replicas = [...seg.replicas].sort((a, b) => a.slot - b.slot).map((loc) => newReplica(pool, map, seg.index, loc));
    return new Mirror(map.name, seg.index, replicas, failureHandler, tracker);
  });
}
