import { moduleLogger } from '../shared/logger.js';
import type { PlacementModel } from './placement.js';
import type { ManagerStore } from './store.js';
import type { DiskRecord } from './types.js';

// Chunks reported bad (VastSky's notifyBadBlocks, manager/xmlrpc/methods-notify.ts):
// kept in the disk's record (`badChunks`, persisted with it, so they stay bad
// across manager restarts) and in the placement model, which never hands a
// bad chunk out: a free one is taken out of the pool at once, one a volume
// owns when the volume lets it go (its replica replaced, the volume deleted).
// VastSky marks such extents FAULTY the same way. The storage node is not
// told: its chunk record has no "bad" state (adding one is a format change),
// so a manager rebuilt from storage forgets them (docs/rebuild-from-storage.md).

const log = moduleLogger('manager.bad-chunks');

export interface BadChunksResult {
  /** Chunk indexes newly recorded bad. */
  added: number[];
  /** Of those, how many were free and are out of the pool now (the rest: when their volume lets them go). */
  freeNow: number;
}

/** Records chunks of a disk as bad (durably, with an event) and takes them out of placement. */
export async function markChunksBad(store: ManagerStore, model: PlacementModel, d: DiskRecord, chunks: Iterable<number>, reason: string): Promise<BadChunksResult> {
  const known = new Set(d.badChunks ?? []);
  const added = [...new Set(chunks)].filter((i) => Number.isInteger(i) && i >= 0 && i < d.chunkCount && !known.has(i)).sort((a, b) => a - b);
  if (added.length === 0) return { added, freeNow: 0 };
  const before = d.badChunks;
  d.badChunks = [...known, ...added].sort((a, b) => a - b);
  try {
    await store.write(store.batch().putDisk(d).event('disk.bad_blocks', `disk:${d.id}`, reason,
      { path: d.path, chunks: added.length, first: added[0]!, last: added[added.length - 1]!, totalBad: d.badChunks.length }));
  } catch (err) {
    if (before) d.badChunks = before;
    else delete d.badChunks;
    throw err;
  }
  const freeNow = model.markBad(d.id, added);
  log.warn({ diskId: d.id, path: d.path, added: added.length, freeNow, totalBad: d.badChunks.length, reason },
    `disk ${d.id}: ${added.length} chunk(s) marked bad; never handed out again`);
  return { added, freeNow };
}
