import type { Chunk, Done } from './chunk.js';
import { allSet, clearBit, setBit, testBit } from '../shared/region-bitmap.js';

// Reads and writes inside one chunk, keeping chunks thin and leak-free (docs/design.md
// rule 7) by construction:
// - a region whose written-bit is clear reads as zeros without touching disk;
// - the first write into a clear region zero-fills the rest of that region,
//   and only once the data and the zeros are written is the bit set and the
//   record persisted; only then is the write acknowledged. A crash before the
//   record lands leaves the bit clear: the region still reads as zeros, never
//   as a former owner's bytes;
// - first writes racing into the same clear region serialise on that region's
//   initialisation (one promise per region), so no zero-fill can land over a
//   neighbour's data.
// The common case (every touched region already written) is one pread/pwrite
// and no promise. Callers check ranges, ownership and epochs beforehand.

/** Shared source of zeros for gap fills (never written to). */
const ZEROS = Buffer.alloc(1024 * 1024);

/** Reads chunk bytes [offset, offset + length) into dst[dstOffset...]. */
export function readChunk(chunk: Chunk, offset: number, length: number, dst: Buffer, dstOffset: number, cb: Done): void {
  if (length === 0) return process.nextTick(cb, null);
  const rs = chunk.regionSize;
  const map = chunk.rec.bitmap;
  const end = offset + length;
  const r0 = Math.floor(offset / rs);
  const r1 = Math.floor((end - 1) / rs);
  if (allSet(map, r0, r1)) return chunk.disk.read(dst, dstOffset, length, chunk.dataOffset + offset, cb);

  // Mixed: one pread per run of written regions, zeros for the rest.
  let pending = 1;
  let firstErr: Error | null = null;
  const partDone: Done = (err) => {
    if (err !== null && firstErr === null) firstErr = err;
    if (--pending === 0) cb(firstErr);
  };
  let pos = offset;
  while (pos < end) {
    let r = Math.floor(pos / rs);
    const written = testBit(map, r);
    while (r + 1 <= r1 && testBit(map, r + 1) === written) r++;
    const runEnd = Math.min(end, (r + 1) * rs);
    const at = dstOffset + (pos - offset);
    if (written) {
      pending++;
      chunk.disk.read(dst, at, runEnd - pos, chunk.dataOffset + pos, partDone);
    } else {
      dst.fill(0, at, at + (runEnd - pos));
    }
    pos = runEnd;
  }
  partDone(null);
}

/** Writes `data` at chunk offset `offset`; with `fua` the data and record are durable before cb. */
export function writeChunk(chunk: Chunk, offset: number, data: Buffer | undefined, fua: boolean, cb: Done): void {
  const length = data === undefined ? 0 : data.length;
  if (length === 0) return fua ? chunk.disk.sync(cb) : process.nextTick(cb, null);
  const rs = chunk.regionSize;
  const r0 = Math.floor(offset / rs);
  const r1 = Math.floor((offset + length - 1) / rs);
  if (allSet(chunk.rec.bitmap, r0, r1)) {
    const position = chunk.dataOffset + offset;
    if (!fua) return chunk.disk.write(data!, 0, length, position, cb);
    return chunk.disk.write(data!, 0, length, position, (err) => (err ? cb(err) : chunk.disk.sync(cb)));
  }
  firstWrite(chunk, offset, data!, fua).then(() => cb(null), cb);
}

async function firstWrite(chunk: Chunk, offset: number, data: Buffer, fua: boolean): Promise<void> {
  const rs = chunk.regionSize;
  const end = offset + data.length;
  const r0 = Math.floor(offset / rs);
  const r1 = Math.floor((end - 1) / rs);
  const map = chunk.rec.bitmap;

  // Claim every clear region we touch, after waiting out any other request
  // initialising one of them (then look again: it may now be written).
  let mine: number[];
  for (;;) {
    mine = [];
    let wait: Promise<void> | undefined;
    for (let r = r0; r <= r1 && wait === undefined; r++) {
      if (testBit(map, r)) continue;
      wait = chunk.initializing?.get(r);
      mine.push(r);
    }
    if (wait === undefined) break;
    await wait.catch(() => {});
  }
  if (mine.length === 0) return plainWrite(chunk, offset, data, fua);

  let release!: () => void;
  const gate = new Promise<void>((resolve) => (release = resolve));
  const initializing = (chunk.initializing ??= new Map());
  for (const r of mine) initializing.set(r, gate);
  try {
    const jobs: Promise<void>[] = [io(chunk, (cb) => chunk.disk.write(data, 0, data.length, chunk.dataOffset + offset, cb))];
    // Only the first and last touched regions can have gaps not covered by the data.
    if (mine[0] === r0 && offset > r0 * rs) jobs.push(zeroFill(chunk, r0 * rs, offset));
    if (mine[mine.length - 1] === r1 && end < (r1 + 1) * rs) jobs.push(zeroFill(chunk, end, Math.min((r1 + 1) * rs, chunk.size)));
    await Promise.all(jobs);
    for (const r of mine) setBit(map, r);
    try {
      await chunk.persist();
    } catch (err) {
      // Not durable: keep the regions unwritten so no later write is acknowledged on top of them.
      for (const r of mine) clearBit(map, r);
      throw err;
    }
  } finally {
    for (const r of mine) initializing.delete(r);
    release();
  }
  if (fua) await chunk.sync();
}

function plainWrite(chunk: Chunk, offset: number, data: Buffer, fua: boolean): Promise<void> {
  return io(chunk, (cb) => writeChunk(chunk, offset, data, fua, cb));
}

/**
 * WRITE_ZEROES and DISCARD: whole written regions in the range get their bit
 * cleared (they read as zeros at once, and a later first write zero-fills
 * them again) and, once the record says so, their bytes punched out of the
 * disk (space given back); partial written regions get zeros written.
 * Unwritten regions already read as zeros. Never exposes old bytes.
 */
export async function zeroChunk(chunk: Chunk, offset: number, length: number, fua: boolean): Promise<void> {
  if (length > 0) {
    const rs = chunk.regionSize;
    const end = offset + length;
    const map = chunk.rec.bitmap;
    const cleared: number[] = [];
    const jobs: Promise<void>[] = [];
    for (let r = Math.floor(offset / rs); r * rs < end; r++) {
      if (!testBit(map, r)) continue;
      const start = r * rs;
      const stop = start + rs;
      if (offset <= start && end >= stop) {
        clearBit(map, r);
        cleared.push(r);
      } else {
        jobs.push(zeroFill(chunk, Math.max(offset, start), Math.min(end, stop)));
      }
    }
    await Promise.all(jobs);
    if (cleared.length > 0) {
      await chunk.persist();
      await punchRegions(chunk, cleared);
    }
  }
  if (fua) await chunk.sync();
}

/**
 * Punches the bytes of regions just cleared (bits off, record persisted).
 * Their first writes wait on the initialisation gates meanwhile, so a punch
 * never lands over new data; a region someone is already initialising is left
 * alone. A failed or unsupported punch leaves the bytes: they read as zeros
 * through the clear bit all the same, and scrubChunk zeroes them before reuse.
 */
async function punchRegions(chunk: Chunk, cleared: number[]): Promise<void> {
  const initializing = (chunk.initializing ??= new Map());
  const mine = cleared.filter((r) => !testBit(chunk.rec.bitmap, r) && !initializing.has(r));
  if (mine.length === 0) return;
  let release!: () => void;
  const gate = new Promise<void>((resolve) => (release = resolve));
  for (const r of mine) initializing.set(r, gate);
  try {
    const rs = chunk.regionSize;
    const punches: Promise<boolean>[] = [];
    for (let i = 0; i < mine.length;) {
      let j = i;
      while (j + 1 < mine.length && mine[j + 1] === mine[j]! + 1) j++;
      const from = mine[i]! * rs;
      punches.push(chunk.disk.punch(chunk.dataOffset + from, Math.min((mine[j]! + 1) * rs, chunk.size) - from));
      i = j + 1;
    }
    await Promise.all(punches);
  } finally {
    for (const r of mine) if (initializing.get(r) === gate) initializing.delete(r);
    release();
  }
}

/** Writes zeros over chunk bytes [from, to) from the shared zero buffer (no copies). */
/**
 * Overwrites every written region of a chunk with zeros and syncs, so that
 * its bytes on disk are zeros before anyone else can own it (rule 7). The
 * bitmap alone makes unwritten regions read as zeros, but after a power loss
 * a next owner's record could reach the disk before its data: then only
 * zeros, never the previous owner's bytes, can show through.
 */
export async function scrubChunk(chunk: Chunk): Promise<void> {
  const rs = chunk.regionSize;
  const bits = chunk.rec.bitmap.length * 8;
  const ranges: [number, number][] = [];
  for (let r = 0; r < bits; r++) {
    if (!testBit(chunk.rec.bitmap, r)) continue;
    const from = r * rs;
    const last = ranges[ranges.length - 1];
    if (last !== undefined && last[1] === from) last[1] = Math.min(from + rs, chunk.size);
    else ranges.push([from, Math.min(from + rs, chunk.size)]);
  }
  if (ranges.length === 0) return;
  // One punch over the written span gives the space back and reads as zeros;
  // where the disk cannot punch, zeros are written, one range at a time
  // (zeroFill already has up to (range / zero buffer) writes in flight).
  const span = ranges[ranges.length - 1]![1] - ranges[0]![0];
  if (!(await chunk.disk.punch(chunk.dataOffset + ranges[0]![0], span))) {
    for (const [from, to] of ranges) await zeroFill(chunk, from, to);
  }
  await chunk.sync();
}

function zeroFill(chunk: Chunk, from: number, to: number): Promise<void> {
  const jobs: Promise<void>[] = [];
  for (let at = from; at < to; at += ZEROS.length) {
    const n = Math.min(ZEROS.length, to - at);
    jobs.push(io(chunk, (cb) => chunk.disk.write(ZEROS, 0, n, chunk.dataOffset + at, cb)));
  }
  return Promise.all(jobs).then(() => undefined);
}

function io(_chunk: Chunk, fn: (cb: Done) => void): Promise<void> {
  return new Promise((resolve, reject) => fn((err) => (err ? reject(err) : resolve())));
}
