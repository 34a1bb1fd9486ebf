import type { ReplicaState } from '../../shared/replica-state.js';

// Where a volume's replicas live (the compact chunk map), how it is built,
// walked and checked; chunks waiting to be freed. Changing one replica of a map:
// manager/chunk-map.ts.
// (manager/types.ts says what leaves this folder.)

/**
 * Where every replica of a volume lives, kept compact because a large volume
 * has thousands of replicas and startup loads every map: `disks` is a table of
 * disk ids and `locs` holds two numbers per replica, [diskRef, chunkIndex],
 * segment-major (replica r = segment * replicas + slot).
 */
export interface ChunkMapRecord {
  volumeId: number;
  replicas: number;
  segmentCount: number;
  disks: string[];
  locs: number[];
  /** Replica positions (segment * replicas + slot) known to be stale: never read, never written. */
  stale?: number[];
  /** Replica positions being rebuilt: written, not read, until their resync finishes. */
  resyncing?: number[];
  /**
   * Chunk identity slots that differ from the position's slot, as pairs
   * [r, idSlot]. A node addresses a chunk by (volume, segment, identity
   * slot); a drain copies a replica onto a chunk allocated under a slot number
   * no chunk of the segment uses (it may sit on the same node as the old one),
   * and the position keeps that identity afterwards.
   */
  ids?: number[];
  /**
   * Drains in progress, as quads [r, diskRef, chunkIndex, idSlot]: the chunk
   * replica r is being copied to (manager/resync/drains.ts). Written like a
   * resyncing replica, never read; replica r itself stays in sync, so the
   * segment keeps full redundancy throughout. At most one per position.
   */
  moves?: number[];
  /**
   * Thin volume: a segment whose every position is [-1, -1] in `locs` is
   * unallocated (no chunks; reads zeros). forEachReplica skips it.
   */
  thin?: boolean;
}

/** A thin map's segment without chunks (manager/thin/). */
export function isUnallocated(map: ChunkMapRecord, segment: number): boolean {
  return map.locs[2 * segment * map.replicas]! < 0;
}

/** Segments with chunks. */
export function allocatedSegments(map: ChunkMapRecord): number {
  let n = 0;
  for (let s = 0; s < map.segmentCount; s++) if (!isUnallocated(map, s)) n++;
  return n;
}

/** A chunk on a disk. */
export interface ChunkLocation {
  diskId: string;
  chunkIndex: number;
}

/** A chunk whose owner is gone but that a node has not yet confirmed freed. */
export interface ToFreeRecord {
  diskId: string;
  chunkIndex: number;
  volumeId: number;
  /** Its identity, when known (a replaced replica): a new chunk of the segment must not reuse it while this one exists. */
  segment?: number;
  idSlot?: number;
  reason: string;
  sinceMs: number;
}

/** One replica's location, unpacked. */
export interface ReplicaRef {
  /** Position (segment * replicas + slot). */
  r: number;
  segment: number;
  slot: number;
  /** The slot number its node addresses the chunk by. */
  idSlot: number;
  diskId: string;
  chunkIndex: number;
  state: ReplicaState;
  /** The target of a drain of replica `r` (state resyncing), not the replica itself. */
  move: boolean;
}

export function buildChunkMap(
  volumeId: number, replicas: number, segmentCount: number,
  placed: ReadonlyArray<{ segment: number; slot: number; diskId: string; chunkIndex: number }>,
): ChunkMapRecord {
  const disks: string[] = [];
  const refOf = new Map<string, number>();
  const locs = new Array<number>(segmentCount * replicas * 2).fill(-1);
  for (const p of placed) {
    let ref = refOf.get(p.diskId);
    if (ref === undefined) {
      ref = disks.length;
      disks.push(p.diskId);
      refOf.set(p.diskId, ref);
    }
    const r = p.segment * replicas + p.slot;
    locs[2 * r] = ref;
    locs[2 * r + 1] = p.chunkIndex;
  }
  return { volumeId, replicas, segmentCount, disks, locs };
}

/**
 * Calls fn for every replica of the map, segment-major; a segment's drain
 * targets (`move: true`) come after its replicas.
 */
export function forEachReplica(map: ChunkMapRecord, fn: (ref: ReplicaRef) => void): void {
  const stale = map.stale && map.stale.length > 0 ? new Set(map.stale) : undefined;
  const resyncing = map.resyncing && map.resyncing.length > 0 ? new Set(map.resyncing) : undefined;
  const ids = pairsOf(map.ids, 2);
  const moves = pairsOf(map.moves, 4);
  const total = map.segmentCount * map.replicas;
  for (let r = 0; r < total; r++) {
    const segment = Math.floor(r / map.replicas);
    const slot = r % map.replicas;
    if (map.locs[2 * r]! < 0) continue; // an unallocated segment of a thin volume
    fn({
      r, segment, slot, idSlot: ids?.get(r) ?? slot,
      diskId: map.disks[map.locs[2 * r]!]!,
      chunkIndex: map.locs[2 * r + 1]!,
      state: stale?.has(r) ? 'stale' : resyncing?.has(r) ? 'resyncing' : 'in_sync',
      move: false,
    });
    if (moves && slot === map.replicas - 1) {
      for (let p = r - slot; p <= r; p++) {
        const at = moves.get(p);
        if (at === undefined) continue;
        const q = map.moves!;
        fn({ r: p, segment, slot: p % map.replicas, idSlot: q[at + 3]!, diskId: map.disks[q[at + 1]!]!, chunkIndex: q[at + 2]!, state: 'resyncing', move: true });
      }
    }
  }
}

/** Position -> its value (width 2: the identity slot) or its offset in the list (width 4), or undefined when the list is empty. */
function pairsOf(list: number[] | undefined, width: 2 | 4): Map<number, number> | undefined {
  if (!list || list.length === 0) return undefined;
  const out = new Map<number, number>();
  for (let i = 0; i + width <= list.length; i += width) out.set(list[i]!, width === 2 ? list[i + 1]! : i);
  return out;
}

/** Checks that a map loaded from disk is whole; returns a reason or undefined. */
export function chunkMapProblem(map: ChunkMapRecord): string | undefined {
  const total = map.segmentCount * map.replicas;
  if (!Array.isArray(map.locs) || map.locs.length !== total * 2) return `expected ${total * 2} location numbers, found ${map.locs?.length}`;
  for (let i = 0; i < map.locs.length; i += 2) {
    const ref = map.locs[i]!;
    const r = i / 2;
    if (map.thin && ref === -1 && map.locs[i + 1] === -1 && isUnallocated(map, Math.floor(r / map.replicas))) continue;
    if (!(ref >= 0 && ref < map.disks.length) || !(map.locs[i + 1]! >= 0)) return `replica ${r} has no location`;
  }
  const position = (r: number | undefined) => Number.isInteger(r) && r! >= 0 && r! < total;
  const idSlot = (x: number | undefined) => Number.isInteger(x) && x! >= 0 && x! <= 255;
  if (map.ids !== undefined) {
    if (!Array.isArray(map.ids) || map.ids.length % 2 !== 0) return 'identity slots are not pairs';
    for (let i = 0; i < map.ids.length; i += 2) if (!position(map.ids[i]) || !idSlot(map.ids[i + 1])) return `identity slot entry ${i / 2} is invalid`;
  }
  if (map.moves !== undefined) {
    if (!Array.isArray(map.moves) || map.moves.length % 4 !== 0) return 'drain targets are not quads';
    for (let i = 0; i < map.moves.length; i += 4) {
      const ref = map.moves[i + 1]!;
      if (!position(map.moves[i]) || !(ref >= 0 && ref < map.disks.length) || !(map.moves[i + 2]! >= 0) || !idSlot(map.moves[i + 3])) return `drain target ${i / 4} is invalid`;
    }
  }
  return undefined;
}
