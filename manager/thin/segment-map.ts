import { replicaLocation, setReplicaLocation, setReplicaState, identitySlot, setIdentitySlot, moveOf } from '../chunk-map.js';
import type { ChunkLocation, ChunkMapRecord } from '../types.js';
import { isUnallocated } from '../types.js';

// A thin map's segments (types.ts ChunkMapRecord.thin): an unallocated
// segment has [-1, -1] at every position; allocating points each slot at its
// new chunk (in sync: a new chunk reads zeros like the unallocated segment
// did); freeing puts the -1s back and drops the positions' state. Pure: the
// caller persists the map in the batch that makes the change durable.

/** Points the segment's slots at `chunks` (one per slot). Throws if the segment has chunks. */
export function assignSegment(map: ChunkMapRecord, segment: number, chunks: ReadonlyArray<ChunkLocation & { slot: number }>): void {
  if (!isUnallocated(map, segment)) throw new Error(`segment ${segment} is allocated already`);
  if (chunks.length !== map.replicas) throw new Error(`segment ${segment} needs ${map.replicas} chunks, got ${chunks.length}`);
  for (const c of chunks) {
    const r = segment * map.replicas + c.slot;
    setReplicaLocation(map, r, c);
    setReplicaState(map, r, 'in_sync');
    setIdentitySlot(map, r, c.slot);
  }
}

/** The chunks of an allocated segment with the slot their nodes know them by. */
export function segmentChunks(map: ChunkMapRecord, segment: number): Array<ChunkLocation & { slot: number; idSlot: number }> {
  if (isUnallocated(map, segment)) return [];
  const out: Array<ChunkLocation & { slot: number; idSlot: number }> = [];
  for (let slot = 0; slot < map.replicas; slot++) {
    const r = segment * map.replicas + slot;
    out.push({ ...replicaLocation(map, r), slot, idSlot: identitySlot(map, r) });
  }
  return out;
}

/** Makes the segment unallocated: no location, state or identity slot left for its positions. Refuses one with a drain target. */
export function unassignSegment(map: ChunkMapRecord, segment: number): void {
  for (let slot = 0; slot < map.replicas; slot++) {
    const r = segment * map.replicas + slot;
    if (moveOf(map, r)) throw new Error(`segment ${segment} slot ${slot} is being drained`);
  }
  for (let slot = 0; slot < map.replicas; slot++) {
    const r = segment * map.replicas + slot;
    setReplicaState(map, r, 'in_sync');
    setIdentitySlot(map, r, slot);
    map.locs[2 * r] = -1;
    map.locs[2 * r + 1] = -1;
  }
}
