import { allSet, defaultRegionSize, setBit, testBit } from '../../shared/region-bitmap.js';
import type { Mirror } from './mirror.js';

// Snapshots and clones on the head (docs/snapshots.md): a volume with a
// backing chain (a clone, or a volume that was snapshotted) reads a region
// from its own chunks only if its segment is allocated AND the region's
// written bit is set; otherwise from the first backing volume (read-only
// mirrors over the snapshot's chunks, same pool and replica selection as any
// read), recursively down the chain, zeros at the bottom.
//
// Writes: a write whose regions are all written goes straight to the mirror
// (the steady path: one bitmap test, no allocation). A write touching a
// region not written yet is a copy-up: under a per-region lock (concurrent
// writes to the same unwritten region wait for each other, so no copy-up
// writes older data over a newer write) the partial edge regions are filled
// from the backing, the whole regions are written, then their bits are set.
// The written bits of the volume's own segments start as the union of its
// in-sync replicas' (GetChunkRegions at attach; a segment allocated later
// starts empty) and are set by this head once its writes are acknowledged.

/** One read-only volume of the chain, nearest first. */
export interface BackingLevel {
  name: string;
  volumeId: number;
  /** Its segments (no replicas: unallocated, read from the next level). */
  mirrors: Mirror[];
  /** Written bits per allocated segment when it has a backing itself; undefined: every region of an allocated segment is its own. */
  written: (Uint8Array | undefined)[] | undefined;
}

export class Backing {
  readonly regionSize: number;
  private readonly bitmapBytes: number;
  /** Copy-ups in flight, by segment * regionsPerChunk + region. */
  private readonly copying = new Map<number, Promise<void>>();
  private readonly regionsPerChunk: number;
  /** Copy-ups in progress (a snapshot's quiesce waits for them: idle()). */
  private active = 0;
  private idleWaiters: (() => void)[] = [];

  constructor(
    private readonly chunkSize: number,
    readonly levels: readonly BackingLevel[],
    /** Written bits of this volume's own segments (undefined: unallocated, or allocated after the attach: empty). */
    private readonly own: (Uint8Array | undefined)[],
    private readonly maxPiece: number,
    /** Bytes per written bit: the cluster's disks' region size (VolumeMap.region_size). */
    regionSize = defaultRegionSize(chunkSize),
  ) {
    this.regionSize = regionSize;
    this.regionsPerChunk = Math.ceil(chunkSize / this.regionSize);
    this.bitmapBytes = Math.ceil(this.regionsPerChunk / 8);
  }

  /** Written bits of segment s (allocated): created empty for a segment allocated since the attach. */
  private bits(s: number): Uint8Array {
    let b = this.own[s];
    if (b === undefined) {
      b = new Uint8Array(this.bitmapBytes);
      this.own[s] = b;
    }
    return b;
  }

  /** Regions of segment s this volume wrote (tests, flatten). */
  writtenBits(s: number): Uint8Array | undefined {
    return this.own[s];
  }

  /** Whether a read of [so, so + n) of segment s needs nothing from the chain. */
  private ownCovers(m: Mirror, s: number, so: number, n: number): boolean {
    if (m.replicas.length === 0) return false;
    const b = this.own[s];
    return b !== undefined && allSet(b, Math.floor(so / this.regionSize), Math.floor((so + n - 1) / this.regionSize));
  }

  read(m: Mirror, s: number, so: number, dest: Buffer): Promise<Buffer> {
    if (this.ownCovers(m, s, so, dest.length)) return m.read(so, dest);
    const bits = m.replicas.length === 0 ? undefined : this.bits(s);
    return this.readMixed(bits, m, 0, s, so, dest).then(() => dest);
  }

  /** Reads runs of regions set in `bits` from `m`, the others from level `next` of the chain. */
  private readMixed(bits: Uint8Array | undefined, m: Mirror, next: number, s: number, so: number, dest: Buffer): Promise<unknown> {
    if (bits === undefined) return this.readLevel(next, s, so, dest);
    const rs = this.regionSize;
    const end = so + dest.length;
    const parts: Promise<unknown>[] = [];
    for (let at = so; at < end;) {
      const own = testBit(bits, Math.floor(at / rs));
      let stop = Math.min(end, (Math.floor(at / rs) + 1) * rs);
      while (stop < end && testBit(bits, Math.floor(stop / rs)) === own) stop = Math.min(end, stop + rs);
      const sub = dest.subarray(at - so, stop - so);
      parts.push(own ? m.read(at, sub) : this.readLevel(next, s, at, sub));
      at = stop;
    }
    return parts.length === 1 ? parts[0]! : settleAll(parts);
  }

  /** Reads [so, so + dest.length) of segment s as level i of the chain holds it (zeros below the last). */
  readLevel(i: number, s: number, so: number, dest: Buffer): Promise<unknown> {
    const level = this.levels[i];
    if (level === undefined) {
      dest.fill(0);
      return Promise.resolve();
    }
    const m = level.mirrors[s];
    if (m === undefined || m.replicas.length === 0) return this.readLevel(i + 1, s, so, dest);
    if (level.written === undefined) return m.read(so, dest);
    return this.readMixed(level.written[s] ?? undefined, m, i + 1, s, so, dest);
  }

  isWritten(s: number, r: number): boolean {
    const b = this.own[s];
    return b !== undefined && testBit(b, r);
  }

  /** Flatten: writes region r of allocated segment s with `data` (what the chain holds) unless the volume wrote it first. */
  async fillRegion(m: Mirror, s: number, r: number, data: Buffer, segLen: number): Promise<boolean> {
    const so = r * this.regionSize;
    if (testBit(this.bits(s), r)) return false;
    await this.copyUp(m, s, so, data, false, segLen, r, r, true);
    return true;
  }

  /** Whether segment s reads zeros everywhere in the chain (nothing allocated anywhere). */
  chainEmpty(s: number): boolean {
    return this.levels.every((l) => (l.mirrors[s]?.replicas.length ?? 0) === 0);
  }

  /** A write to allocated segment s (`segLen`: its length within the volume). */
  write(m: Mirror, s: number, so: number, data: Buffer, fua: boolean, segLen: number): Promise<void> {
    const rs = this.regionSize;
    const first = Math.floor(so / rs);
    const last = Math.floor((so + data.length - 1) / rs);
    const bits = this.bits(s);
    if (allSet(bits, first, last)) return m.write(so, data, fua);
    return this.copyUp(m, s, so, data, fua, segLen, first, last);
  }

  /** Resolves once no copy-up is in progress. */
  idle(): Promise<void> {
    if (this.active === 0) return Promise.resolve();
    return new Promise((resolve) => this.idleWaiters.push(resolve));
  }

  private async copyUp(m: Mirror, s: number, so: number, data: Buffer, fua: boolean, segLen: number, first: number, last: number, onlyUnwritten = false): Promise<void> {
    this.active++;
    try {
      await this.copyUpLocked(m, s, so, data, fua, segLen, first, last, onlyUnwritten);
    } finally {
      if (--this.active === 0) {
        const w = this.idleWaiters;
        this.idleWaiters = [];
        for (const f of w) f();
      }
    }
  }

  private async copyUpLocked(m: Mirror, s: number, so: number, data: Buffer, fua: boolean, segLen: number, first: number, last: number, onlyUnwritten: boolean): Promise<void> {
    const base = s * this.regionsPerChunk;
    // Wait for copy-ups of these regions by other writes, then take ours in the same tick.
    for (let waited = true; waited;) {
      waited = false;
      for (let r = first; r <= last; r++) {
        const p = this.copying.get(base + r);
        if (p !== undefined) {
          await p.catch(() => undefined);
          waited = true;
          break;
        }
      }
    }
    const bits = this.bits(s);
    if (allSet(bits, first, last)) return onlyUnwritten ? undefined : m.write(so, data, fua);
    let release!: () => void;
    const held = new Promise<void>((resolve) => { release = resolve; });
    const mine: number[] = [];
    for (let r = first; r <= last; r++) {
      if (!testBit(bits, r)) {
        this.copying.set(base + r, held);
        mine.push(r);
      }
    }
    try {
      const rs = this.regionSize;
      const end = so + data.length;
      const start = !testBit(bits, first) && so % rs !== 0 ? first * rs : so;
      const stop = !testBit(bits, last) && end % rs !== 0 ? Math.min((last + 1) * rs, segLen) : end;
      const filled = start !== so || stop !== end ? await this.fill(s, start, stop, so, data) : undefined;
      const buf = filled ?? data;
      const at0 = filled === undefined ? so : start;
      const pieces: Promise<void>[] = [];
      for (let at = 0; at < buf.length; at += this.maxPiece) {
        pieces.push(m.write(at0 + at, buf.subarray(at, Math.min(buf.length, at + this.maxPiece)), fua));
      }
      await settleAll(pieces);
      for (const r of mine) setBit(bits, r);
    } finally {
      for (const r of mine) this.copying.delete(base + r);
      release();
    }
  }

  /**
   * The bytes a copy-up writes: [start, stop) of segment s, `data` at `so`
   * and the chain's bytes around it. Undefined when the edges read zeros in
   * the whole chain without I/O: then `data` alone is written and the node
   * zero-fills the rest of each region it writes first (rule 7). A small
   * write takes its two edges in ONE read of the chain (the data's bytes are
   * read too and overwritten): one request instead of two.
   */
  private async fill(s: number, start: number, stop: number, so: number, data: Buffer): Promise<Buffer | undefined> {
    const rs = this.regionSize;
    const end = so + data.length;
    if (this.chainZeros(s, Math.floor(start / rs), Math.floor((stop - 1) / rs))) return undefined;
    const buf = Buffer.allocUnsafe(stop - start);
    if (start < so && stop > end && stop - start <= ONE_READ_SPAN * rs) {
      await this.readLevel(0, s, start, buf);
    } else {
      const fills: Promise<unknown>[] = [];
      if (start < so) fills.push(this.readLevel(0, s, start, buf.subarray(0, so - start)));
      if (stop > end) fills.push(this.readLevel(0, s, end, buf.subarray(end - start)));
      await settleAll(fills);
    }
    data.copy(buf, so - start);
    return buf;
  }

  /**
   * Whether regions first..last of segment s read zeros at every level of the
   * chain with no I/O: the segment is unallocated there, or that level's
   * written bits for them are clear. A level without written bits (a plain
   * volume) holds data wherever it is allocated.
   */
  chainZeros(s: number, first: number, last: number): boolean {
    for (const level of this.levels) {
      const m = level.mirrors[s];
      if (m === undefined || m.replicas.length === 0) continue;
      if (level.written === undefined) return false;
      const w = level.written[s];
      if (w !== undefined && anySet(w, first, last)) return false;
    }
    return true;
  }
}

/** Flatten (docs/snapshots.md): what a volume needs from the head while its regions are copied. */
export interface FlattenTarget {
  readonly segmentCount: number;
  readonly chunkSize: number;
  readonly size: number;
  segment(s: number): Mirror;
  ensureAllocated(s: number): Promise<void>;
}

/** Regions a flatten copies at once (each under its own region lock), as the manager's detached flatten. */
const FLATTEN_REGIONS_IN_FLIGHT = 8;

/**
 * Copies every region of `v` it has not written and its chain holds data in
 * (not all zeros) into its own chunks, under the same per-region lock as a
 * copy-up (FLATTEN_REGIONS_IN_FLIGHT regions at a time): a foreground write
 * that got there first wins (the region is skipped once written). Returns the
 * bytes copied. `first`, `count`: only those segments (count 0: to the end).
 */
export async function flattenVolume(b: Backing, v: FlattenTarget, first = 0, count = 0): Promise<{ bytes: number; regions: number }> {
  const rs = b.regionSize;
  const done = { bytes: 0, regions: 0 };
  const end = count > 0 ? Math.min(v.segmentCount, first + count) : v.segmentCount;
  for (let s = first; s < end; s++) {
    if (b.chainEmpty(s)) continue;
    const segLen = Math.min(v.chunkSize, v.size - s * v.chunkSize);
    let next = 0;
    let failed = false;
    const worker = async (buf: Buffer): Promise<void> => {
      for (let off = next; off < segLen && !failed; off = next) {
        next += rs;
        const n = Math.min(rs, segLen - off);
        const copied = await flattenRegion(b, v, s, off, buf.subarray(0, n), segLen).catch((err: unknown) => {
          failed = true; // the others stop at their next region
          throw err;
        });
        if (copied) {
          done.bytes += n;
          done.regions++;
        }
      }
    };
    await settleAll(Array.from({ length: FLATTEN_REGIONS_IN_FLIGHT }, () => worker(Buffer.allocUnsafe(rs))));
  }
  return done;
}

/** One region of a flatten: read from the chain into `piece`, written unless the volume wrote it (true: copied). */
async function flattenRegion(b: Backing, v: FlattenTarget, s: number, off: number, piece: Buffer, segLen: number): Promise<boolean> {
  const r = off / b.regionSize;
  if (v.segment(s).replicas.length > 0 && b.isWritten(s, r)) return false;
  await b.readLevel(0, s, off, piece);
  if (piece.every((x) => x === 0)) return false;
  await v.ensureAllocated(s);
  return b.fillRegion(v.segment(s), s, r, piece, segLen);
}

/** A copy-up whose two edges are at most this many regions apart reads them from the chain in one request. */
const ONE_READ_SPAN = 4;

/** Whether any region in [first, last] is set. */
function anySet(map: Uint8Array, first: number, last: number): boolean {
  for (let r = first; r <= last; r++) if (testBit(map, r)) return true;
  return false;
}

/** A zero buffer shared by WRITE_ZEROES / DISCARD on volumes with a backing (never written into). */
export const ZEROS = Buffer.alloc(1 << 20);

async function settleAll(pieces: Promise<unknown>[]): Promise<void> {
  const results = await Promise.allSettled(pieces);
  for (const r of results) if (r.status === 'rejected') throw r.reason;
}
