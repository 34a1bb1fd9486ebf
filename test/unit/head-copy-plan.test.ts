import { describe, expect, it } from 'vitest';
import { segmentPieces } from '../../head-agent/jobs/copy-job.js';

// What a copy job's host copies and zeroes (head-agent/jobs/copy-job.ts): runs of
// the source's written regions are copied; regions written in the target but
// not in the source are zeroed; regions written in neither are left alone.

const bits = (count: number, set: number[]) => {
  const m = new Uint8Array(Math.ceil(count / 8));
  for (const r of set) m[r >> 3]! |= 1 << (r & 7);
  return m;
};

describe('copy plan (segmentPieces)', () => {
  const map = { size: 64 * 1024, chunkSize: 16 * 1024 }; // 4 segments of 16 regions of 1 KiB
  it('copies runs of written source regions at their volume offsets, split at the piece size', () => {
    const src = { regionSize: 1024, map: bits(16, [0, 1, 2, 3, 7, 15]) };
    const dst = { regionSize: 1024, map: bits(16, []) };
    expect(segmentPieces(1, map, src, dst, 2048)).toEqual([
      { offset: 16384, length: 2048, zero: false }, { offset: 18432, length: 2048, zero: false },
      { offset: 16384 + 7 * 1024, length: 1024, zero: false }, { offset: 16384 + 15 * 1024, length: 1024, zero: false },
    ]);
  });
  it('zeroes what only the target wrote; nothing for regions written in neither', () => {
    const src = { regionSize: 1024, map: bits(16, [2]) };
    const dst = { regionSize: 1024, map: bits(16, [1, 2, 3, 9]) };
    expect(segmentPieces(0, map, src, dst, 1 << 20)).toEqual([
      { offset: 2048, length: 1024, zero: false },
      { offset: 1024, length: 1024, zero: true }, { offset: 3072, length: 1024, zero: true }, { offset: 9216, length: 1024, zero: true },
    ]);
  });
  it('a short last segment is cut at the volume size', () => {
    const short = { size: 16 * 1024 + 1536, chunkSize: 16 * 1024 };
    const src = { regionSize: 1024, map: bits(16, [0, 1, 2]) };
    expect(segmentPieces(1, short, src, { regionSize: 1024, map: bits(16, []) }, 1 << 20)).toEqual([{ offset: 16384, length: 1536, zero: false }]);
  });
  it('different region sizes: a target region only partly covered by the copy is zeroed whole', () => {
    const src = { regionSize: 1024, map: bits(16, [0]) };
    const dst = { regionSize: 2048, map: bits(8, [0, 3]) };
    const pieces = segmentPieces(0, map, src, dst, 1 << 20);
    expect(pieces).toContainEqual({ offset: 0, length: 2048, zero: true });
    expect(pieces).toContainEqual({ offset: 6144, length: 2048, zero: true });
  });
});
