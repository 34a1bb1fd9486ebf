import type { ChunkLocation, ChunkMapRecord, ReplicaState, ResyncRecord } from './types.js';

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
  map.locs[2 * r] = diskRef(map, loc.diskId);
  map.locs[2 * r + 1] = loc.chunkIndex;
}

function diskRef(map: ChunkMapRecord, diskId: string): number {
  let ref = map.disks.indexOf(diskId);
  if (ref < 0) {
    ref = map.disks.length;
    map.disks.push(diskId);
  }
  return ref;
}

/** The slot number the node holding replica r addresses its chunk by (types.ts `ids`). */
export function identitySlot(map: ChunkMapRecord, r: number): number {
  const ids = map.ids;
  if (ids) for (let i = 0; i < ids.length; i += 2) if (ids[i] === r) return ids[i + 1]!;
  return r % map.replicas;
}

export function setIdentitySlot(map: ChunkMapRecord, r: number, idSlot: number): void {
  const rest: number[] = [];
  const ids = map.ids ?? [];
  for (let i = 0; i < ids.length; i += 2) if (ids[i] !== r) rest.push(ids[i]!, ids[i + 1]!);
  if (idSlot !== r % map.replicas) rest.push(r, idSlot);
  if (rest.length > 0) map.ids = rest;
  else delete map.ids;
}

export interface MoveTarget extends ChunkLocation {
  idSlot: number;
}

/** The chunk replica r is being drained to, if any (types.ts `moves`). */
export function moveOf(map: ChunkMapRecord, r: number): MoveTarget | undefined {
  const q = map.moves;
  if (q) for (let i = 0; i < q.length; i += 4) if (q[i] === r) return { diskId: map.disks[q[i + 1]!]!, chunkIndex: q[i + 2]!, idSlot: q[i + 3]! };
  return undefined;
}

export function setMove(map: ChunkMapRecord, r: number, to: MoveTarget): void {
  clearMove(map, r);
  (map.moves ??= []).push(r, diskRef(map, to.diskId), to.chunkIndex, to.idSlot);
}

export function clearMove(map: ChunkMapRecord, r: number): void {
  const rest: number[] = [];
  const q = map.moves ?? [];
  for (let i = 0; i < q.length; i += 4) if (q[i] !== r) rest.push(q[i]!, q[i + 1]!, q[i + 2]!, q[i + 3]!);
  if (rest.length > 0) map.moves = rest;
  else delete map.moves;
}

export interface SegmentReplica extends ChunkLocation {
  slot: number;
  r: number;
  idSlot: number;
  state: ReplicaState;
  /** A drain target of replica r (state resyncing), listed after the replicas. */
  move: boolean;
}

/** Every replica of one segment, then its drain targets. */
export function segmentReplicas(map: ChunkMapRecord, segment: number): SegmentReplica[] {
  const out: SegmentReplica[] = [];
  if (map.locs[2 * segment * map.replicas]! < 0) return out; // unallocated (thin)
  for (let slot = 0; slot < map.replicas; slot++) {
    const r = positionOf(map, segment, slot);
    out.push({ slot, r, idSlot: identitySlot(map, r), state: replicaState(map, r), move: false, ...replicaLocation(map, r) });
  }
  if (map.moves) {
    for (let slot = 0; slot < map.replicas; slot++) {
      const r = positionOf(map, segment, slot);
      const m = moveOf(map, r);
      if (m) out.push({ slot, r, state: 'resyncing', move: true, ...m });
    }
  }
  return out;
}

/**
 * The lowest slot number no chunk of the segment is addressed by: neither a
 * replica nor a drain target, nor a replaced chunk still waiting to be freed
 * (`taken`). A slot is one byte on the wire.
 */
export function freeIdentitySlot(map: ChunkMapRecord, segment: number, taken: Iterable<number> = []): number | undefined {
  const used = new Set<number>(taken);
  for (const x of segmentReplicas(map, segment)) used.add(x.idSlot);
  for (let id = 0; id <= 255; id++) if (!used.has(id)) return id;
  return undefined;
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

export const sameChunk = (a: ChunkLocation, b: ChunkLocation): boolean => a.diskId === b.diskId && a.chunkIndex === b.chunkIndex;

/**
 * Why the map no longer writes to a resync record's target (undefined: it
 * does). A rebuild's target is its slot's resyncing chunk; a drain's is the
 * slot's drain target, and the drained replica must still be in sync (if it
 * went stale, the drain pass turns the copy into a rebuild of the slot).
 */
export function targetProblem(rec: ResyncRecord, map: ChunkMapRecord): string | undefined {
  const r = positionOf(map, rec.segment, rec.slot);
  const move = moveOf(map, r);
  if (move) {
    if (!sameChunk(move, rec.target)) return 'its drain target changed';
    return replicaState(map, r) === 'in_sync' ? undefined : 'the drained replica is no longer in sync';
  }
  if (replicaState(map, r) !== 'resyncing') return 'its target is no longer a resyncing replica';
  return sameChunk(replicaLocation(map, r), rec.target) ? undefined : 'the slot points elsewhere';
}

/** The slot number a resync target's node knows it by. */
export function targetIdSlot(rec: ResyncRecord, map: ChunkMapRecord): number {
  const r = positionOf(map, rec.segment, rec.slot);
  return moveOf(map, r)?.idSlot ?? identitySlot(map, r);
}
