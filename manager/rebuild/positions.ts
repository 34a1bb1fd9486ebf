import type { ChunkMapRecord, ToFreeRecord } from '../types.js';
import { LOST_DISK_ID, MAX_ID_SLOT, better, type Found } from './found.js';

// Rules 4 and 5 of a rebuild from storage (manager/rebuild/plan.ts): per
// segment, which chunks are kept (the best K, one per identity slot; the
// rest freed) and the position each takes; a position no chunk fills is a
// stale replica on the placeholder disk LOST_DISK_ID.

export interface PlaceInput {
  id: number;
  k: number;
  segmentCount: number;
  /** The volume's chunks per segment, segment-ascending, one list per segment 0..segmentCount-1. */
  bySegment: Found[][];
  /** A thin volume: segments without chunks are unallocated ([-1, -1]), not lost. */
  thin: boolean;
  /** Every chunk of this volume id (conflicting ones too): a placeholder's identity slot avoids them. */
  all: Found[];
  nowMs: number;
}

/** Builds the volume's map; frees what is not kept (into toFree); placeholder chunks are numbered from lost.next. */
export function placeSegments(input: PlaceInput, toFree: ToFreeRecord[], lost: { next: number }): { map: ChunkMapRecord; stale: number } {
  const { id, k, segmentCount, bySegment, nowMs, thin } = input;
  const bySegmentIndex = new Map(bySegment.map((l) => [l[0]!.segment, l]));
  const c = { all: input.all };
  // Rules 4 and 5: the chunks kept, and their positions.
  const disksTable: string[] = [];
  const refOf = new Map<string, number>();
  const refFor = (diskId: string) => {
    let ref = refOf.get(diskId);
    if (ref === undefined) {
      ref = disksTable.length;
      disksTable.push(diskId);
      refOf.set(diskId, ref);
    }
    return ref;
  };
  const locs = new Array<number>(segmentCount * k * 2);
  const stale: number[] = [];
  const idPairs: number[] = [];
  const usedByOthers = new Map<number, Set<number>>();
  // Identity slots any chunk of this volume id uses, per segment (also
  // conflicting ones): a placeholder's slot must not collide with them.
  for (const f of c.all) {
    let set = usedByOthers.get(f.segment);
    if (!set) usedByOthers.set(f.segment, (set = new Set()));
    set.add(f.idSlot);
  }
  const position: (Found | undefined)[] = new Array(k);
  for (let s = 0; s < segmentCount; s++) {
    const found = thin ? bySegmentIndex.get(s) : bySegment[s];
    if (found === undefined) { // unallocated segment of a thin volume
      for (let p = 0; p < k; p++) locs[2 * (s * k + p)] = locs[2 * (s * k + p) + 1] = -1;
      continue;
    }
    const list = found.slice().sort(better);
    const bySlot = new Map<number, Found>();
    const kept: Found[] = [];
    for (const f of list) {
      const first = bySlot.get(f.idSlot);
      if (first) {
        toFree.push({ diskId: f.diskId, chunkIndex: f.chunkIndex, volumeId: id, segment: s, idSlot: f.idSlot,
          reason: `older copy of identity slot ${f.idSlot} (${first.diskId}#${first.chunkIndex} is kept): a replaced replica not yet freed`, sinceMs: nowMs });
        continue;
      }
      bySlot.set(f.idSlot, f);
      if (kept.length < k) {
        kept.push(f);
      } else {
        toFree.push({ diskId: f.diskId, chunkIndex: f.chunkIndex, volumeId: id, segment: s, idSlot: f.idSlot,
          reason: `surplus chunk of segment ${s} (${k} better copies kept${f.inSync ? '' : '; this one is stale'}): the target of a drain that had not finished; the drain restarts if the disk is removed again`, sinceMs: nowMs });
      }
    }
    position.fill(undefined);
    const rest: Found[] = [];
    for (const f of kept) {
      if (f.idSlot < k) position[f.idSlot] = f;
      else rest.push(f);
    }
    rest.sort((a, b) => a.idSlot - b.idSlot);
    let next = 0;
    for (let p = 0; p < k; p++) {
      const r = s * k + p;
      let f = position[p];
      if (!f && next < rest.length) f = rest[next++];
      if (f) {
        locs[2 * r] = refFor(f.diskId);
        locs[2 * r + 1] = f.chunkIndex;
        if (f.idSlot !== p) idPairs.push(r, f.idSlot);
        if (!f.inSync) stale.push(r);
        continue;
      }
      // A position no chunk fills: a stale replica on the placeholder disk.
      const used = usedByOthers.get(s) ?? new Set<number>();
      let idSlot = p;
      if (used.has(idSlot)) {
        idSlot = 0;
        while (idSlot <= MAX_ID_SLOT && used.has(idSlot)) idSlot++;
      }
      used.add(idSlot);
      usedByOthers.set(s, used);
      locs[2 * r] = refFor(LOST_DISK_ID);
      locs[2 * r + 1] = lost.next++;
      if (idSlot !== p) idPairs.push(r, idSlot);
      stale.push(r);
    }
  }
  const map: ChunkMapRecord = { volumeId: id, replicas: k, segmentCount, disks: disksTable, locs };
  if (thin) map.thin = true;
  if (stale.length > 0) map.stale = stale;
  if (idPairs.length > 0) map.ids = idPairs;
  return { map, stale: stale.length };
}
