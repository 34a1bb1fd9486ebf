import { allRegions, mapRegionSize, orInto, setRuns, testBit } from '../../shared/region-bitmap.js';
import type { NodeControlClients } from '../engine/node-control-clients.js';
import type { LinearVolume } from '../engine/linear-volume.js';
import type { VolumeMap } from '../attachments.js';
import { TokenBucket } from '../../shared/token-bucket.js';

// The data work of a copy job on its host head (job-host.ts runs it): copy
// the regions ever written in the source (GetChunkRegions' `written` bitmap,
// the union over the source's in-sync replicas) to the same offsets of the
// target, and zero the regions written in the target but never in the
// source, so every byte of the target reads as the source's afterwards.
// Regions written in neither are left alone: they read as zeros on both.
// A few pieces are in flight; a token bucket holds the rate to the job's
// throttle. The caller flushes the target and writes the final CAS.

export interface CopyPiece {
  offset: number;
  length: number;
  /** Zero it in the target (written there, not in the source) instead of copying. */
  zero: boolean;
}

export interface CopyProgress {
  done: number;
  total: number;
}

export interface CopyOptions {
  source: LinearVolume;
  target: LinearVolume;
  sourceMap: VolumeMap;
  targetMap: VolumeMap;
  clients: NodeControlClients;
  progress: CopyProgress;
  signal: AbortSignal;
  throttleMibps: number;
  /** Largest piece copied at once (default 1 MiB). */
  pieceBytes?: number;
  /** Pieces in flight (default 8). */
  inflight?: number;
}

// Small pieces, several in flight: a node answers each within the data
// timeout even when loaded (4 MiB pieces were taken as hung at load 20).
const DEFAULT_PIECE = 1024 * 1024;
const DEFAULT_INFLIGHT = 8;

/** The union of the `written` bitmaps of a segment's replicas (those `use` accepts); every region when none answers. */
async function writtenUnion(map: VolumeMap, segment: number, clients: NodeControlClients, use: (state: string) => boolean, needAll: boolean): Promise<{ regionSize: number; map: Uint8Array }> {
  const seg = map.segments.find((s) => s.index === segment)!;
  const regionSize = mapRegionSize(map);
  const count = Math.ceil(map.chunkSize / regionSize);
  const union = new Uint8Array(Math.ceil(count / 8));
  let answered = 0;
  let size = regionSize;
  // An unallocated segment of a thin volume holds nothing: nothing to copy from it, nothing to zero in it.
  if (seg.replicas.length === 0) return { regionSize, map: union };
  for (const r of seg.replicas.filter((x) => use(x.state || 'in_sync'))) {
    if (!r.controlAddress) continue;
    try {
      const got = await clients.regions(r.controlAddress, { volumeId: map.volumeId, segment, slot: r.slot }, map.chunkSize);
      if (answered > 0 && got.regionSize !== size) return { regionSize: size, map: allRegions(count) };
      size = got.regionSize;
      orInto(union, got.written);
      answered++;
    } catch {
      if (needAll) return { regionSize: size, map: allRegions(count) };
    }
  }
  return answered > 0 ? { regionSize: size, map: union } : { regionSize: size, map: allRegions(count) };
}

/** What to copy and what to zero, segment by segment (runs of regions, at most `pieceBytes` each). */
export async function planCopy(opts: Pick<CopyOptions, 'sourceMap' | 'targetMap' | 'clients' | 'pieceBytes'>): Promise<CopyPiece[]> {
  const { sourceMap, targetMap, clients } = opts;
  const pieces: CopyPiece[] = [];
  const segments = Math.ceil(sourceMap.size / sourceMap.chunkSize);
  for (let s = 0; s < segments; s++) {
    const [src, dst] = await Promise.all([
      writtenUnion(sourceMap, s, clients, (st) => st === 'in_sync', false),
      // Every replica of the target that holds anything must be zeroed where the source has nothing: any unknown, zero all.
      writtenUnion(targetMap, s, clients, () => true, true),
    ]);
    pieces.push(...segmentPieces(s, sourceMap, src, dst, opts.pieceBytes ?? DEFAULT_PIECE));
  }
  return pieces;
}

/** The pieces of one segment from the two bitmaps (pure; exported for tests). */
export function segmentPieces(segment: number, map: Pick<VolumeMap, 'size' | 'chunkSize'>, src: { regionSize: number; map: Uint8Array }, dst: { regionSize: number; map: Uint8Array }, pieceBytes: number): CopyPiece[] {
  const base = segment * map.chunkSize;
  const segLen = Math.min(map.chunkSize, map.size - base);
  const out: CopyPiece[] = [];
  const add = (regionSize: number, bits: Uint8Array, zero: boolean) => {
    const count = Math.ceil(segLen / regionSize);
    for (const [first, last] of setRuns(bits, 0, count, Math.max(1, Math.floor(pieceBytes / regionSize)))) {
      const start = first * regionSize;
      const end = Math.min(segLen, (last + 1) * regionSize);
      if (end > start) out.push({ offset: base + start, length: end - start, zero });
    }
  };
  add(src.regionSize, src.map, false);
  // Written in the target, not in the source: zeroed (at the target's region size, minus what the copy covers).
  const only = new Uint8Array(dst.map.length);
  for (let r = 0; r < dst.map.length * 8; r++) {
    if (!testBit(dst.map, r)) continue;
    const from = Math.floor((r * dst.regionSize) / src.regionSize);
    const to = Math.floor(((r + 1) * dst.regionSize - 1) / src.regionSize);
    let covered = true;
    for (let x = from; x <= to; x++) if (!testBit(src.map, x)) covered = false;
    if (!covered) only[r >> 3]! |= 1 << (r & 7);
  }
  add(dst.regionSize, only, true);
  return out;
}

/** Copies (and zeroes) the pieces; stops at the first error or when `signal` aborts, after the pieces in flight settle. */
export async function copyPieces(opts: CopyOptions, pieces: CopyPiece[]): Promise<void> {
  const bucket = new TokenBucket(opts.throttleMibps * 1024 * 1024, Math.max(1024 * 1024, opts.throttleMibps * 1024 * 1024 / 4));
  let next = 0;
  let failure: unknown;
  const worker = async (): Promise<void> => {
    while (failure === undefined && next < pieces.length) {
      if (opts.signal.aborted) {
        failure = opts.signal.reason;
        return;
      }
      const p = pieces[next++]!;
      try {
        await bucket.take(p.length, opts.signal);
        if (p.zero) {
          await opts.target.writeZeroes(p.offset, p.length, false);
        } else {
          const data = await opts.source.read(p.offset, p.length);
          // Zeros written in the source stay unwritten in a thin target (they read zeros there already, or get cleared).
          if (opts.target.thin && isZero(data)) await opts.target.writeZeroes(p.offset, p.length, false);
          else await opts.target.write(p.offset, data, false);
        }
        opts.progress.done += p.length;
      } catch (err) {
        failure ??= err;
      }
    }
  };
  await Promise.all(Array.from({ length: opts.inflight ?? DEFAULT_INFLIGHT }, worker));
  if (failure !== undefined) throw failure;
}

const ZEROS = Buffer.alloc(DEFAULT_PIECE);

/** Whether every byte of `data` is zero (compared against a shared zero buffer, no allocation). */
export function isZero(data: Buffer): boolean {
  for (let at = 0; at < data.length; at += ZEROS.length) {
    const n = Math.min(ZEROS.length, data.length - at);
    if (!data.subarray(at, at + n).equals(ZEROS.subarray(0, n))) return false;
  }
  return true;
}
