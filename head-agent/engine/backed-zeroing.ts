import { ZEROS } from './backing.js';
import type { LinearVolume } from './linear-volume.js';
import { writeSegment } from './segment-io.js';
import { settleAll } from './settle.js';
import { forEachPiece } from './volume-pieces.js';

/**
 * DISCARD / WRITE_ZEROES on a volume with a backing: zeros are written (a
 * freed segment or cleared written bit would expose the backing's data);
 * segments with nothing allocated anywhere in the chain already read zeros.
 */
export function zeroBacked(v: LinearVolume, offset: number, length: number, fua: boolean): Promise<void> {
  const backing = v.backing!;
  return forEachPiece(v, offset, length, (m, so, n) => {
    const s = m.index;
    if (m.replicas.length === 0 && backing.chainEmpty(s)) return Promise.resolve();
    const step = Math.min(ZEROS.length, v.maxPiece);
    const pieces: Promise<void>[] = [];
    for (let at = 0; at < n; at += step) pieces.push(writeSegment(v, s, so + at, ZEROS.subarray(0, Math.min(step, n - at)), fua));
    return settleAll(pieces);
  }, true);
}
