import type { ChunkLocation, ChunkMapRecord, ReplicaState } from './types.js';

// Reading and changing one replica of a compact chunk map (types.ts
// ChunkMapRecord). A replica is addressed by its position
// r = segment * replicas + slot. States live in two small sorted lists
// (`stale`, `resyncing`); a replica in neither is in sync. Callers change
// the map in memory and put it in the batch that makes the change durable.

export const positionOf = (map: ChunkMapRecord, segment: number, slot: number): number => segment * map.replicas + slot;

export function replicaState(map: ChunkMapRecord, r: number): ReplicaState {
  if (map.stale?.includes(r)) return 'stale';
  if (map.resyncing?.includes(r)) return 'resyncing';
  return 'in_sync';
}

/** Sets a replica's state; returns whether it changed. */
export function setReplicaState(map: ChunkMapRecord, r: number, state: ReplicaState): boolean {
  if (replicaState(map, r) === state) return false;
  const drop = (list: number[] | undefined) => list?.filter((x) => x !== r);
  map.stale = drop(map.stale);
  map.resyncing = drop(map.resyncing);
  if (state === 'stale') map.stale = insertSorted(map.stale ?? [], r);
  if (state === 'resyncing') map.resyncing = insertSorted(map.resyncing ?? [], r);
  if (map.stale?.length === 0) delete map.stale;
  if (map.resyncing?.length === 0) delete map.resyncing;
  return true;
}

export function replicaLocation(map: ChunkMapRecord, r: number): ChunkLocation {
  return { diskId: map.disks[map.locs[2 * r]!]!, chunkIndex: map.locs[2 * r + 1]! };
}

/** Points a replica at another chunk (adding the disk to the map's table if new). */
export function setReplicaLocation(map: ChunkMapRecord, r: number, loc: ChunkLocation): void {
  let ref = map.disks.indexOf(loc.diskId);
  if (ref < 0) {
    ref = map.disks.length;
    map.disks.push(loc.diskId);
  }
  map.locs[2 * r] = ref;
  map.locs[2 * r + 1] = loc.chunkIndex;
}

export interface SegmentReplica extends ChunkLocation {
  slot: number;
  r: number;
  state: ReplicaState;
}

/** Every replica of one segment. */
export function segmentReplicas(map: ChunkMapRecord, segment: number): SegmentReplica[] {
  const out: SegmentReplica[] = [];
  for (let slot = 0; slot < map.replicas; slot++) {
    const r = positionOf(map, segment, slot);
    out.push({ slot, r, state: replicaState(map, r), ...replicaLocation(map, r) });
  }
  return out;
}

/** Positions of replicas that are not in sync (stale or resyncing), ascending. */
export function unhealthyPositions(map: ChunkMapRecord): number[] {
  return [...(map.stale ?? []), ...(map.resyncing ?? [])].sort((a, b) => a - b);
}

/** Some segment has fewer in-sync replicas than it should. */
export function isDegraded(map: ChunkMapRecord): boolean {
  return (map.stale?.length ?? 0) + (map.resyncing?.length ?? 0) > 0;
}

function insertSorted(list: number[], x: number): number[] {
  const out = list.slice();
  let i = out.length;
  while (i > 0 && out[i - 1]! > x) i--;
  out.splice(i, 0, x);
  return out;
}
