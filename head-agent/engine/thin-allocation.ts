import { CapacityError } from '../../shared/errors.js';
import type { LinearVolume } from './linear-volume.js';
import type { Mirror } from './mirror.js';
import { settleAll } from './settle.js';
import { forEachPiece } from './volume-pieces.js';

// Thin volumes (docs/thin-provisioning.md). An unallocated segment (a mirror
// without replicas) reads zeros, with no round trip; its first write waits
// for the allocator (one allocation per segment, shared by every write that
// waits). A segment being freed holds its I/O until it is done (a gate).
// DISCARD / WRITE_ZEROES covering a segment whole (at once, or in pieces
// since its last write) gives its chunks back.

/**
 * Thin volumes: how a first write gets its segment's chunks, and how a wholly
 * discarded segment gives them back (head-agent/thin-segments.ts). Both apply
 * the manager's answer to the volume's map before they resolve.
 */
export interface SegmentAllocator {
  /** Resolves once the segment has its replicas, fenced at the volume's epoch; rejects with ENOSPC (CapacityError) when it cannot. */
  allocate(volume: LinearVolume, segment: number): Promise<void>;
  /** Gives the segment's chunks back (after they were discarded on every replica); resolves whether or not the manager agreed. */
  free(volume: LinearVolume, segment: number): Promise<void>;
}

export class ThinSegments {
  /** First-write allocations in flight, by segment (one per segment; every waiting write shares it). */
  private readonly allocating = new Map<number, Promise<void>>();
  /** Segments being freed: their I/O waits until the segment is unallocated (or stays allocated). */
  private readonly gates = new Map<number, Promise<void>>();
  /**
   * Ranges of allocated segments discarded or zeroed since their last write
   * (clients split a large discard: QEMU sends at most the export's maximum
   * request size): once a segment is covered whole, it is freed.
   */
  private readonly trimmed = new Map<number, TrimmedRanges>();

  constructor(private readonly v: LinearVolume) {}

  /** The gate of segment s while it is being freed (the hot path: one size test when none is). */
  gate(s: number): Promise<void> | undefined {
    return this.gates.size === 0 ? undefined : this.gates.get(s);
  }

  /** Allocations and frees in flight (a snapshot's quiesce waits for them). */
  inFlight(): Promise<void>[] {
    return [...this.allocating.values(), ...this.gates.values()];
  }

  /** A write to segment s: what was discarded of it before no longer counts towards freeing it. */
  wrote(s: number): void {
    if (this.trimmed.size !== 0) this.trimmed.delete(s);
  }

  /** The run of segments from `offset` that share its allocation (BlockDevice.extentAt). */
  extentAt(offset: number): { allocated: boolean; length: number } {
    const v = this.v;
    // Only the holder's map is current (a standby's may predate allocations): otherwise "allocated", which is always safe.
    if (v.lease !== 'held' || !v.thin || v.backing !== undefined) return { allocated: true, length: v.size - offset };
    const cs = v.chunkSize;
    let s = Math.floor(offset / cs);
    const allocated = v.isAllocated(s);
    while (s + 1 < v.segmentCount && v.isAllocated(s + 1) === allocated) s++;
    return { allocated, length: Math.min(v.size, (s + 1) * cs) - offset };
  }

  /** Segments with chunks. */
  allocatedCount(): number {
    let n = 0;
    for (const m of this.v.mirrors()) if (m.replicas.length > 0) n++;
    return n;
  }

  allocate(s: number): Promise<void> {
    let p = this.allocating.get(s);
    if (p !== undefined) return p;
    const v = this.v;
    const allocator = v.allocator;
    p = allocator === undefined
      ? Promise.reject(new CapacityError(`volume ${v.name}: segment ${s} has no chunks and this head cannot allocate any`, { volume: v.name, segment: s }))
      : allocator.allocate(v, s);
    p = p.then(() => {
      if (!v.isAllocated(s)) throw new CapacityError(`volume ${v.name}: segment ${s} still has no chunks after its allocation`, { volume: v.name, segment: s });
    });
    const done = p.finally(() => this.allocating.delete(s));
    done.catch(() => undefined);
    this.allocating.set(s, done);
    return done;
  }

  /**
   * DISCARD / WRITE_ZEROES on a thin volume: unallocated segments already
   * read zeros (nothing to send); a segment the range covers whole is
   * discarded on every replica and then given back (free); the rest
   * goes to the replicas as usual (the nodes clear whole regions, zero partial ones).
   */
  zero(offset: number, length: number, fn: (m: Mirror, segOff: number, n: number) => Promise<void>): Promise<void> {
    const v = this.v;
    const cs = v.chunkSize;
    return forEachPiece(v, offset, length, (m, so, n) => {
      const s = m.index;
      if (m.replicas.length === 0 && !this.gates.has(s)) return Promise.resolve();
      const whole = so === 0 && (n === cs || s * cs + n === v.size) && v.allocator !== undefined;
      if (whole) return this.free(s);
      const gate = this.gate(s);
      if (gate !== undefined) return gate.then(() => v.resumed() ?? (v.isAllocated(s) ? inPieces(v.maxPiece, v.segment(s), so, n, fn) : undefined));
      return inPieces(v.maxPiece, m, so, n, fn).then(() => this.noteTrimmed(s, so, n));
    }, true);
  }

  /** Records a discarded range of segment s; frees the segment once all of it was discarded since its last write. */
  private noteTrimmed(s: number, so: number, n: number): Promise<void> | undefined {
    const v = this.v;
    if (v.allocator === undefined || !v.isAllocated(s)) return undefined;
    let t = this.trimmed.get(s);
    if (t === undefined) this.trimmed.set(s, (t = new TrimmedRanges()));
    t.add(so, so + n);
    if (!t.covers(Math.min(v.chunkSize, v.size - s * v.chunkSize))) return undefined;
    this.trimmed.delete(s);
    return this.free(s);
  }

  /**
   * Frees a whole segment: its I/O waits (gate); mutations already in flight
   * finish; every replica discards the whole chunk (it reads zeros: rule 7
   * holds before the manager hands the chunks out again, and the node scrubs
   * them when it frees them); then the allocator asks the manager to free it.
   * If the manager cannot be asked, the segment stays allocated and reads
   * zeros: the discard still succeeded.
   */
  private free(s: number): Promise<void> {
    const pending = this.gates.get(s);
    if (pending !== undefined) return pending;
    let open!: () => void;
    const gate = new Promise<void>((resolve) => { open = resolve; });
    this.gates.set(s, gate);
    const v = this.v;
    const run = (async () => {
      await v.tracker.barrier();
      const m = v.segment(s);
      if (m.replicas.length === 0) return;
      const end = Math.min(v.chunkSize, v.size - s * v.chunkSize);
      const pieces: Promise<void>[] = [];
      for (let at = 0; at < end; at += v.maxPiece) pieces.push(m.discard(at, Math.min(v.maxPiece, end - at)));
      await settleAll(pieces);
      await v.allocator!.free(v, s);
    })();
    const done = run.finally(() => {
      this.gates.delete(s);
      open();
    });
    return done;
  }
}

/** Sends [so, so + n) of one segment in pieces under the payload limit. */
export function inPieces(maxPiece: number, m: Mirror, so: number, n: number, fn: (m: Mirror, segOff: number, n: number) => Promise<void>): Promise<void> {
  if (n <= maxPiece) return fn(m, so, n);
  const pieces: Promise<void>[] = [];
  for (let at = 0; at < n; at += maxPiece) pieces.push(fn(m, so + at, Math.min(maxPiece, n - at)));
  return settleAll(pieces);
}

/** Sorted, merged [start, end) ranges of one segment (few: clients discard in large pieces). */
export class TrimmedRanges {
  private readonly ranges: Array<[number, number]> = [];

  add(start: number, end: number): void {
    const out: Array<[number, number]> = [];
    let [a, b] = [start, end];
    for (const [x, y] of this.ranges) {
      if (y < a || x > b) out.push([x, y]);
      else [a, b] = [Math.min(a, x), Math.max(b, y)];
    }
    out.push([a, b]);
    out.sort((p, q) => p[0] - q[0]);
    this.ranges.length = 0;
    this.ranges.push(...out);
  }

  /** Whether [0, length) is covered. */
  covers(length: number): boolean {
    return this.ranges.length === 1 && this.ranges[0]![0] === 0 && this.ranges[0]![1] >= length;
  }
}
