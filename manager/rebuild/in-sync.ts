import { NOTE_BITS, type Found } from './found.js';

// Rule 3 of a rebuild from storage (manager/rebuild/plan.ts has the rules and
// the reasons): which chunks of each segment are in sync. The segment's newest
// note (highest map_version, then epoch; tied notes: the union of their stale
// bits) decides alone; only a segment no note covers falls back to
// generations, counted among the chunks not noted stale. A chunk on a disk
// that cannot serve it is stale.

/**
 * Sets `inSync` on every chunk of `bySegment` (one list per segment, chunks of
 * one volume); returns the segments left without a good copy.
 */
export function markInSync(bySegment: readonly Found[][]): Set<number> {
  const noGoodCopy = new Set<number>();
  for (const list of bySegment) {
    let noteVersion = -1;
    let noteEpoch = -1;
    let mask = 0;
    for (const f of list) {
      if (f.mapVersion > noteVersion || (f.mapVersion === noteVersion && f.epoch > noteEpoch)) {
        noteVersion = f.mapVersion;
        noteEpoch = f.epoch;
        mask = f.staleSlots;
      } else if (f.mapVersion === noteVersion && f.epoch === noteEpoch) {
        mask = (mask | f.staleSlots) >>> 0;
      }
    }
    let topGeneration = -1;
    for (const f of list) {
      f.inSync = f.readable && !(f.idSlot < NOTE_BITS && ((mask >>> f.idSlot) & 1) === 1);
      if (f.inSync && f.generation > topGeneration) topGeneration = f.generation;
    }
    if (noteVersion > 0) topGeneration = -1; // a note decides alone (rule 3)
    let good = false;
    for (const f of list) {
      if (f.inSync && f.generation < topGeneration) f.inSync = false;
      good ||= f.inSync;
    }
    if (!good) noGoodCopy.add(list[0]!.segment);
  }
  return noGoodCopy;
}
