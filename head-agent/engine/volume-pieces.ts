import { InvalidArgumentError } from '../../shared/errors.js';
import type { LinearVolume } from './linear-volume.js';
import type { Mirror } from './mirror.js';
import { readSegment, writeSegment } from './segment-io.js';
import { settleAll } from './settle.js';

// How a volume splits a request: bounds-checked, then cut at segment
// boundaries and at the protocol's payload limit. A read fills slices of ONE
// destination buffer; a write hands each piece a subarray view of the
// caller's buffer (no copies). The volume keeps the one-piece fast path.

/** A read of several pieces into `dest` (the caller checked the range). */
export function readPieces(v: LinearVolume, offset: number, dest: Buffer): Promise<Buffer> {
  const length = dest.length;
  if (length === 0) return Promise.resolve(dest);
  const cs = v.chunkSize;
  const seg = Math.floor(offset / cs);
  const segOff = offset - seg * cs;
  // Fast path: one piece (the common case), no array, no extra promise.
  if (segOff + length <= cs && length <= v.maxPiece) return readSegment(v, seg, segOff, dest);
  const pieces: Promise<unknown>[] = [];
  for (let pos = 0; pos < length;) {
    const at = offset + pos;
    const s = Math.floor(at / cs);
    const so = at - s * cs;
    const n = Math.min(length - pos, cs - so, v.maxPiece);
    pieces.push(readSegment(v, s, so, dest.subarray(pos, pos + n)));
    pos += n;
  }
  return settleAll(pieces).then(() => dest);
}

/** A write of several pieces (the caller checked the range). */
export function writePieces(v: LinearVolume, offset: number, data: Buffer, fua: boolean): Promise<void> {
  const length = data.length;
  const cs = v.chunkSize;
  const pieces: Promise<void>[] = [];
  for (let pos = 0; pos < length;) {
    const at = offset + pos;
    const s = Math.floor(at / cs);
    const so = at - s * cs;
    const n = Math.min(length - pos, cs - so, v.maxPiece);
    pieces.push(writeSegment(v, s, so, data.subarray(pos, pos + n), fua));
    pos += n;
  }
  return settleAll(pieces);
}

/** Runs `fn` on every piece of [offset, offset + length) (checked here). */
export function forEachPiece(
  v: LinearVolume, offset: number, length: number, fn: (m: Mirror, segOff: number, n: number) => Promise<void>, wholeSegments = false,
): Promise<void> {
  const bad = checkRange(v, offset, length);
  if (bad !== undefined) return Promise.reject(bad);
  if (length === 0) return Promise.resolve();
  const cs = v.chunkSize;
  const pieces: Promise<void>[] = [];
  for (let pos = 0; pos < length;) {
    const at = offset + pos;
    const s = Math.floor(at / cs);
    const so = at - s * cs;
    // Thin zeroing takes a segment in one piece (ThinSegments.free splits it); mutations stay under the payload limit.
    const n = Math.min(length - pos, cs - so, wholeSegments ? cs : v.maxPiece);
    pieces.push(fn(v.segment(s), so, n));
    pos += n;
  }
  return pieces.length === 1 ? pieces[0]! : settleAll(pieces);
}

/** The error a request of [offset, offset + length) fails with, if any. */
export function checkRange(v: LinearVolume, offset: number, length: number): Error | undefined {
  if (v.isDetached) return v.detachedError();
  if (!Number.isSafeInteger(offset) || offset < 0 || !Number.isSafeInteger(length) || length < 0) {
    return new InvalidArgumentError(`volume ${v.name}: invalid offset ${offset} or length ${length}`, { volume: v.name, offset, length });
  }
  if (offset + length > v.size) {
    return new InvalidArgumentError(
      `volume ${v.name}: request out of range (offset ${offset} + length ${length} > size ${v.size})`,
      { volume: v.name, offset, length, size: v.size },
    );
  }
  return undefined;
}
