import type { Chunk } from './chunk.js';
import { clearBit, setBit, testBit } from '../shared/region-bitmap.js';

// The write-intent (dirty-region) bitmap of a chunk (docs/design.md rule 4). A head
// marks a region dirty (MARK_DIRTY) before its first write there and clears it
// (CLEAR_DIRTY) once a flush has made the replicas agree and nothing is in
// flight there. When a head dies, the dirty bits on its replicas name the
// regions that may differ between them: the next holder reconciles those
// before balancing reads over the replicas.
//
// Durability is asymmetric on purpose:
// - a mark is on disk before its reply: a mark lost in a crash would let a
//   diverged region go unreconciled;
// - a clear only changes memory before its reply and is persisted lazily
//   (coalesced with any other record write): a clear lost in a crash only
//   costs an extra reconcile of a region that was already in agreement.
// Callers check ranges, ownership and epochs beforehand.

/** Sets the dirty bits of every region overlapping [offset, offset + length); durable before it resolves. */
export async function markDirty(chunk: Chunk, offset: number, length: number): Promise<void> {
  if (length === 0) return;
  const map = chunk.rec.dirty;
  const rs = chunk.regionSize;
  let changed = false;
  for (let r = Math.floor(offset / rs); r * rs < offset + length; r++) {
    if (testBit(map, r)) continue;
    setBit(map, r);
    changed = true;
  }
  // Bits already set in memory are durable unless a mark that set them is
  // still writing the record, or one of those writes failed: then this mark
  // needs a record write too (coalesced with the one in flight, if any: the
  // next write encodes the record as it is in memory then, bits included).
  if (!changed && chunk.markPersists === 0 && !chunk.dirtyUnsure) return;
  chunk.markPersists++;
  try {
    await chunk.persist();
    // Every record write that starts after a failed one encodes the bits
    // that failed, so one success settles the doubt.
    chunk.dirtyUnsure = false;
  } catch (err) {
    // The bits stay set in memory (more dirty than needed is safe), but until
    // a record write succeeds no mark of them may be acknowledged without one.
    chunk.dirtyUnsure = true;
    throw err;
  } finally {
    chunk.markPersists--;
  }
}

/**
 * Clears the dirty bits of every region overlapping the range, in memory at
 * once; the record write is started but not awaited (see above). Returns the
 * record write, for callers (tests) that want to wait for it.
 */
export function clearDirty(chunk: Chunk, offset: number, length: number): Promise<void> {
  if (length === 0) return Promise.resolve();
  const map = chunk.rec.dirty;
  const rs = chunk.regionSize;
  let changed = false;
  for (let r = Math.floor(offset / rs); r * rs < offset + length; r++) {
    if (!testBit(map, r)) continue;
    clearBit(map, r);
    changed = true;
  }
  if (!changed) return Promise.resolve();
  const persisted = chunk.persist();
  // Nobody may be waiting: a failure here must not surface as an unhandled rejection.
  persisted.catch(() => {});
  return persisted;
}

/** ORs `bits` (a dirty bitmap of the same size) into the chunk's dirty bitmap; true if any bit changed. */
export function mergeDirty(chunk: Chunk, bits: Uint8Array): boolean {
  const map = chunk.rec.dirty;
  let changed = false;
  for (let i = 0; i < map.length && i < bits.length; i++) {
    const merged = map[i]! | bits[i]!;
    if (merged !== map[i]) {
      map[i] = merged;
      changed = true;
    }
  }
  return changed;
}
