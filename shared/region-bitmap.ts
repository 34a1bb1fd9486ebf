import { REGION_BITS_PER_CHUNK } from './constants.js';

// Region bitmaps of a chunk, the one home of their bit helpers. A chunk is
// divided into regions (REGION_BITS_PER_CHUNK by default); two bitmaps use
// them: `written` (docs/design.md rule 7, thin chunks: bit r set means region r has
// been written by the chunk's current owner and its bytes on disk are the
// owner's; clear means it reads as zeros without touching the disk; what a
// resync copies, rule 8) and `dirty` (write-intent bits: what a new holder
// reconciles, rule 4). The storage node keeps them, the head fetches them.
// Bit order: region r is bit (r & 7) of byte (r >> 3), least significant first.

export function testBit(map: Uint8Array, r: number): boolean {
  return ((map[r >> 3] ?? 0) & (1 << (r & 7))) !== 0;
}

export function setBit(map: Uint8Array, r: number): void {
  map[r >> 3]! |= 1 << (r & 7);
}

export function clearBit(map: Uint8Array, r: number): void {
  map[r >> 3]! &= ~(1 << (r & 7));
}

/** True when every region in [first, last] is written. */
export function allSet(map: Uint8Array, first: number, last: number): boolean {
  let r = first;
  // Whole bytes at a time where aligned: the common case is a fully written chunk.
  while (r <= last) {
    if ((r & 7) === 0 && r + 7 <= last) {
      if (map[r >> 3] !== 0xff) return false;
      r += 8;
    } else {
      if (!testBit(map, r)) return false;
      r++;
    }
  }
  return true;
}

/** Number of written regions. */
export function countSet(map: Uint8Array): number {
  let n = 0;
  for (let i = 0; i < map.length; i++) {
    let b = map[i]!;
    while (b !== 0) { b &= b - 1; n++; }
  }
  return n;
}

/** a |= b (b may be shorter). */
export function orInto(a: Uint8Array, b: Uint8Array): void {
  const n = Math.min(a.length, b.length);
  for (let i = 0; i < n; i++) a[i]! |= b[i]!;
}

/** A bitmap with every one of `count` regions set (when the written map cannot be had). */
export function allRegions(count: number): Uint8Array {
  const map = new Uint8Array(Math.ceil(count / 8));
  for (let r = 0; r < count; r++) map[r >> 3]! |= 1 << (r & 7);
  return map;
}

/** Runs of set bits in [from, count) as [first, last] region pairs, each at most maxLen regions. */
export function setRuns(map: Uint8Array, from: number, count: number, maxLen: number): [number, number][] {
  const out: [number, number][] = [];
  let r = from;
  while (r < count) {
    if (!testBit(map, r)) {
      r++;
      continue;
    }
    const first = r;
    while (r + 1 < count && r + 1 - first < maxLen && testBit(map, r + 1)) r++;
    out.push([first, r]);
    r++;
  }
  return out;
}

/**
 * The region size of disks formatted before 4 KiB regions (REGION_BITS_PER_CHUNK
 * regions per chunk: 64 KiB with 256 MiB chunks); also what a head assumes
 * when its map names no region size (an older manager).
 */
export function defaultRegionSize(chunkSize: number): number {
  return Math.max(1, Math.ceil(chunkSize / REGION_BITS_PER_CHUNK));
}

/** The region size a volume map says its cluster's disks use (0 from an older manager: the size before 4 KiB regions). */
export function mapRegionSize(map: { chunkSize: number; regionSize?: number }): number {
  return map.regionSize || defaultRegionSize(map.chunkSize);
}

/** Region size of newly formatted disks: 4 KiB, or smaller for chunks under 16 MiB (at least REGION_BITS_PER_CHUNK regions). */
export const FINE_REGION_SIZE = 4096;

/** The region size a new disk of `chunkSize` chunks is formatted with (docs/snapshots.md "Written regions of 4 KiB"). */
export function fineRegionSize(chunkSize: number): number {
  return Math.min(FINE_REGION_SIZE, defaultRegionSize(chunkSize));
}

/**
 * Checks a region size for chunks of `chunkSize`: a power of two dividing the
 * chunk into a whole number of regions, at least REGION_BITS_PER_CHUNK of them
 * (a multiple of 8), and at most the legacy size. Returns an error message, or '' when valid.
 */
export function regionSizeProblem(chunkSize: number, regionSize: number): string {
  if (!Number.isSafeInteger(regionSize) || regionSize <= 0 || (regionSize & (regionSize - 1)) !== 0) return `region size ${regionSize} must be a power of two`;
  if (chunkSize % regionSize !== 0 || (chunkSize / regionSize) % 8 !== 0) return `region size ${regionSize} must divide the chunk size ${chunkSize} into a multiple of 8 regions`;
  if (regionSize > defaultRegionSize(chunkSize)) return `region size ${regionSize} is above ${defaultRegionSize(chunkSize)} (chunk size / ${REGION_BITS_PER_CHUNK})`;
  return '';
}
