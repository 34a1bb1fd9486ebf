// May a discard give storage back? The one place that decides, for the head
// (clearing written-region bits on the nodes, freeing a discarded segment,
// reporting unwritten regions as holes) and the manager (FreeSegment).
//
// A volume with a BACKING (a clone reading its unwritten regions from a
// snapshot, issue 13) must never deallocate: a cleared written bit or a freed
// segment would read the backing's data again instead of zeros. Its discards
// and write-zeroes are written as zeros instead, and its unwritten regions are
// data (they read the backing), not holes.
//
// `hasBacking`: the head's LinearVolume.hasBacking; the manager passes
// manager/types.ts hasBacking(record).

/** Anything that may have a backing: a head's volume or a manager's volume record. */
export interface MaybeBacked {
  readonly hasBacking?: boolean;
}

/** True when a discard or write-zeroes may clear written bits, free segments or punch holes. */
export function mayDeallocate(volume: MaybeBacked): boolean {
  return volume.hasBacking !== true;
}
