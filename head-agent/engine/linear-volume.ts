import { MAX_DATA_PAYLOAD } from '../../shared/constants.js';
import { InvalidArgumentError, IoError, StaleEpochError, errorMessage } from '../../shared/errors.js';
import { mayDeallocate } from '../../shared/deallocation.js';
import type { AllocationExtent, BlockDevice } from './block-device.js';
import type { Backing } from './backing.js';
import { MutationTracker, type Mirror } from './mirror.js';
import type { Replica } from './replica.js';
import { zeroBacked } from './backed-zeroing.js';
import { readSegment, writeSegment } from './segment-io.js';
import { ThinSegments, type SegmentAllocator } from './thin-allocation.js';
import { VolumeFlush } from './volume-flush.js';
import { checkRange, forEachPiece, readPieces, writePieces } from './volume-pieces.js';
import { LeaseGate, type LeaseRequester, type LeaseState } from './volume-lease.js';
import { VolumeStats } from './volume-stats.js';
import { WriteIntent } from './write-intent.js';
import type { WrittenRegions } from './written-regions.js';

export { TrimmedRanges, type SegmentAllocator } from './thin-allocation.js';
export type { LeaseRequester, LeaseState } from './volume-lease.js';

// A volume: a linear run of segments of `chunkSize` bytes, each a mirror.
// Requests are bounds-checked, then split at segment boundaries and at the
// protocol's payload limit (volume-pieces.ts; segment-io.ts takes each piece
// to its mirror, backing or allocation). Every mutating request carries the lease
// epoch this head holds for the volume. The volume owns the write-intent
// state of its segments (it outlives a re-attach with a newer epoch).
//
// Lease states (held, standby, fenced) and their gates: volume-lease.ts. Only
// 'held' is on the hot path: one field compare. Flushes, the detach's and the
// write-intent sweep's: volume-flush.ts.

export interface LinearVolumeOptions {
  name: string;
  volumeId: number;
  size: number;
  chunkSize: number;
  epoch: number;
  generation: number;
  segments: Mirror[];
  /** The tracker the segments' mirrors were built with. */
  tracker: MutationTracker;
  /** Largest piece sent to one replica (tests lower it). */
  maxPiece?: number;
  /** Write-intent granularity in bytes (write-intent.ts); 0 turns write-intent off. */
  intentGroupBytes?: number;
  /** Start as a standby (default: held). */
  standby?: boolean;
  /** Thin (docs/thin-provisioning.md): segments without replicas are unallocated. */
  thin?: boolean;
}

export class LinearVolume implements BlockDevice {
  readonly name: string;
  readonly volumeId: number;
  private _size: number;
  readonly chunkSize: number;
  /** Mutations in flight (shared with the mirrors). */
  readonly tracker: MutationTracker;
  private _epoch: number;
  private _generation: number;
  private segments: Mirror[];
  /** @internal */
  readonly flushes: VolumeFlush;
  /** Largest piece sent to one replica. */
  readonly maxPiece: number;
  private detached = false;
  private _lease: LeaseState;
  private fencedBy: Error | undefined;
  /** Lease waits and a snapshot's pause (the slow path: volume-lease.ts). */
  private readonly gate = new LeaseGate(this);
  /** How a standby asks for the lease (the attachments set it); without it a standby's I/O fails. */
  leaseRequester: LeaseRequester | undefined;
  /** Thin volumes: the first write to an unallocated segment asks it for chunks. */
  allocator: SegmentAllocator | undefined;
  /** Clones and snapshotted volumes: where unwritten regions read from (backing.ts; set by the attachments). */
  backing: Backing | undefined;
  /** A snapshot attached read-only (docs/snapshots.md): the exports refuse writes (BlockDevice.readOnly). */
  readOnly = false;
  readonly thin: boolean;
  /** Written-region bitmaps for block status (written-regions.ts); set by the attachments. */
  regions: WrittenRegions | undefined;
  /** First-write allocations, segment frees and discarded ranges of a thin volume (thin-allocation.ts). */
  readonly thinSegments = new ThinSegments(this);
  /** Called once when the volume becomes fenced. */
  onFenced: ((volume: LinearVolume, err: Error) => void) | undefined;
  /** Undefined when write-intent is off. */
  readonly intent: WriteIntent | undefined;
  /** I/O counters (the exports update them; the head's metrics read them). */
  readonly stats = new VolumeStats();

  constructor(opts: LinearVolumeOptions) {
    const expected = Math.ceil(opts.size / opts.chunkSize);
    if (opts.segments.length !== expected) {
      throw new InvalidArgumentError(`volume ${opts.name}: ${opts.segments.length} segments given, ${expected} needed for ${opts.size} bytes`);
    }
    this.name = opts.name;
    this.volumeId = opts.volumeId;
    this._size = opts.size;
    this.chunkSize = opts.chunkSize;
    this._epoch = opts.epoch;
    this._generation = opts.generation;
    this.segments = opts.segments;
    this.tracker = opts.tracker;
    this.flushes = new VolumeFlush(this);
    this.maxPiece = Math.min(opts.maxPiece ?? MAX_DATA_PAYLOAD, MAX_DATA_PAYLOAD);
    this.intent = opts.intentGroupBytes === 0 ? undefined : new WriteIntent(opts.name, opts.chunkSize, expected, opts.intentGroupBytes);
    this._lease = opts.standby === true ? 'standby' : 'held';
    this.thin = opts.thin === true;
    this.wire(opts.segments);
  }

  /** Wires the mirrors to this volume: their epoch source, their write-intent state and the fence hook. */
  private wire(segments: readonly Mirror[]): void {
    const fenced = (err: Error): void => this.fence(err);
    segments.forEach((m, i) => {
      m.lease = this;
      m.intent = this.intent?.segments[i];
      m.onFenced = fenced;
    });
  }

  get lease(): LeaseState {
    return this._lease;
  }

  /** Size in bytes; grows with an online resize (grow()), never shrinks. */
  get size(): number {
    return this._size;
  }

  /**
   * Online resize (docs/jobs.md): appends the new segments' mirrors and
   * takes the new size, synchronously, so every request checked after this
   * call sees the new size with its segments in place and none before it
   * does. In-flight requests are below the old size and unaffected. New
   * segments get the volume's epoch, write-intent state and fence hook.
   */
  grow(size: number, added: Mirror[]): void {
    const expected = Math.ceil(size / this.chunkSize);
    if (size <= this._size || this.segments.length + added.length !== expected) {
      throw new InvalidArgumentError(`volume ${this.name}: cannot grow from ${this._size} to ${size} bytes with ${added.length} new segment(s) `
        + `(${this.segments.length} now, ${expected} needed)`, { volume: this.name });
    }
    this.intent?.grow(expected);
    this.segments = [...this.segments, ...added];
    this.wire(this.segments);
    this.flushes.rebuild();
    this._size = size;
  }

  /**
   * This head lost the lease for good (a replica refused our epoch, or the
   * manager says another head took over): every request fails from now on,
   * so no client is told a write succeeded. Re-attaching clears it.
   */
  fence(err: Error): void {
    if (this._lease === 'fenced') return;
    this._lease = 'fenced';
    this.fencedBy = err;
    this.onFenced?.(this, err);
  }

  /**
   * Gives up the lease (a standby head asked for it): new requests wait for
   * the lease to come back, the mutations in flight finish, every node is
   * flushed and the write-intent bits cleared (volume-lease.ts).
   */
  release(): Promise<void> {
    return this.gate.release();
  }

  /**
   * Snapshot of an attached volume (docs/snapshots.md): new requests wait
   * until unquiesce(); what is in flight finishes and every node is flushed
   * (volume-lease.ts).
   */
  quiesce(): Promise<void> {
    return this.gate.quiesce();
  }

  /** Ends a pause (the snapshot was taken, or failed): the waiting requests go on. */
  unquiesce(): void {
    this.gate.unquiesce();
  }

  /** @internal The lease gates move the volume between held and standby. */
  setLease(state: LeaseState): void {
    this._lease = state;
  }

  get isQuiesced(): boolean {
    return this.gate.pause !== undefined;
  }

  /** @internal */
  fencedError(): StaleEpochError {
    return new StaleEpochError(`volume ${this.name} is fenced on this head: another head holds its lease now (${errorMessage(this.fencedBy)}); `
      + 'attach it here again to use it', { volume: this.name });
  }

  get epoch(): number {
    return this._epoch;
  }

  get generation(): number {
    return this._generation;
  }

  get segmentCount(): number {
    return this.segments.length;
  }

  segment(index: number): Mirror {
    const m = this.segments[index];
    if (m === undefined) throw new InvalidArgumentError(`volume ${this.name} has no segment ${index}`);
    return m;
  }

  /** The current mirrors (a re-attach with a newer epoch replaces them). */
  mirrors(): readonly Mirror[] {
    return this.segments;
  }

  /** Every replica of every segment. */
  replicas(): Replica[] {
    return this.segments.flatMap((m) => [...m.replicas]);
  }

  read(offset: number, length: number): Promise<Buffer> {
    if (this._lease !== 'held') return this.gate.after(() => this.read(offset, length));
    const bad = checkRange(this, offset, length);
    if (bad !== undefined) return Promise.reject(bad);
    return readPieces(this, offset, Buffer.allocUnsafe(length));
  }

  /**
   * Reads dest.length bytes at `offset` into a caller-owned buffer; resolves
   * with `dest`. Not in BlockDevice: an export that recycles its reply buffers
   * can use it to avoid a fresh 64 KiB allocation per read (buffers that live
   * across ticks are promoted and drive V8 into frequent mark-compacts).
   */
  readInto(offset: number, dest: Buffer): Promise<Buffer> {
    if (this._lease !== 'held') return this.gate.after(() => this.readInto(offset, dest));
    const bad = checkRange(this, offset, dest.length);
    if (bad !== undefined) return Promise.reject(bad);
    return readPieces(this, offset, dest);
  }

  write(offset: number, data: Buffer, fua: boolean): Promise<void> {
    if (this._lease !== 'held') return this.gate.after(() => this.write(offset, data, fua));
    const length = data.length;
    const bad = checkRange(this, offset, length);
    if (bad !== undefined) return Promise.reject(bad);
    if (length === 0) return Promise.resolve();
    const cs = this.chunkSize;
    const seg = Math.floor(offset / cs);
    const segOff = offset - seg * cs;
    if (segOff + length <= cs && length <= this.maxPiece) return writeSegment(this, seg, segOff, data, fua);
    return writePieces(this, offset, data, fua);
  }

  /**
   * The one predicate for "unwritten regions read from a backing volume"
   * (docs/snapshots.md): such a volume never frees a segment or clears a
   * written bit on a discard (that would expose the backing's data); it
   * writes zeros instead.
   */
  get hasBacking(): boolean {
    return this.backing !== undefined;
  }

  writeZeroes(offset: number, length: number, fua: boolean): Promise<void> {
    if (this._lease !== 'held') return this.gate.after(() => this.writeZeroes(offset, length, fua));
    if (!mayDeallocate(this)) return zeroBacked(this, offset, length, fua);
    if (this.thin) return this.zeroed(offset, length, this.thinSegments.zero(offset, length, (m, so, n) => m.writeZeroes(so, n, fua)));
    return this.zeroed(offset, length, forEachPiece(this, offset, length, (m, so, n) => m.writeZeroes(so, n, fua)));
  }

  discard(offset: number, length: number): Promise<void> {
    if (this._lease !== 'held') return this.gate.after(() => this.discard(offset, length));
    if (!mayDeallocate(this)) return zeroBacked(this, offset, length, false);
    if (this.thin) return this.zeroed(offset, length, this.thinSegments.zero(offset, length, (m, so, n) => m.discard(so, n)));
    return this.zeroed(offset, length, forEachPiece(this, offset, length, (m, so, n) => m.discard(so, n)));
  }

  /** After a discard or write-zeroes: the regions it covered whole read zeros (block status). */
  private zeroed(offset: number, length: number, done: Promise<void>): Promise<void> {
    return this.regions === undefined ? done : done.then(() => this.regions?.noteZeroed(this.chunkSize, offset, length));
  }

  /** What [offset, offset + length) holds (BlockDevice.allocationStatus; written-regions.ts). */
  allocationStatus(offset: number, length: number): Promise<AllocationExtent[]> {
    const bad = checkRange(this, offset, length);
    if (bad !== undefined) return Promise.reject(bad);
    if (this.regions === undefined) return Promise.resolve([{ length, flags: 0 }]);
    return this.regions.status(this, offset, length);
  }

  /** Flatten: resolves once segment s has chunks (a first-write allocation when it has none). */
  ensureAllocated(s: number): Promise<void> {
    return this.isAllocated(s) ? Promise.resolve() : this.thinSegments.allocate(s);
  }

  /** Whether the segment has chunks (a thick volume's always have). */
  isAllocated(segment: number): boolean {
    return (this.segments[segment]?.replicas.length ?? 0) > 0;
  }

  /** The run of segments from `offset` that share its allocation (BlockDevice.extentAt). */
  extentAt(offset: number): { allocated: boolean; length: number } {
    return this.thinSegments.extentAt(offset);
  }

  /** Segments with chunks. */
  allocatedSegments(): number {
    return this.thinSegments.allocatedCount();
  }

  /** @internal After a wait: the error to fail with if the volume cannot take the request any more. */
  resumed(): Promise<never> | undefined {
    if (this.detached) return Promise.reject(this.detachedError());
    if (this._lease === 'fenced') return Promise.reject(this.fencedError());
    return undefined;
  }

  /**
   * FLUSH to every node holding a writable replica of the volume that took a
   * non-FUA write since its last flush: one request per node (the node
   * fdatasyncs every disk holding a chunk of the volume), not per chunk.
   * Resolves when all have flushed; a failure fails the flush and keeps that
   * node marked for the next one.
   */
  async flush(): Promise<void> {
    if (this.detached) throw this.detachedError();
    if (this._lease === 'fenced') throw this.fencedError();
    // A standby has nothing to flush: the release flushed every write this head made.
    if (this._lease === 'standby') return;
    await this.flushes.flush(this._epoch);
  }

  /**
   * Detach: refuse new requests, wait for the mutations in flight to settle,
   * then (unless `force`) flush every node (VolumeFlush.drain). If that flush
   * fails the volume reopens and the error is thrown (the caller may retry, or force).
   */
  async close(force: boolean): Promise<void> {
    this.detached = true;
    if (force) return;
    try {
      await this.flushes.drain();
    } catch (err) {
      this.detached = false;
      throw err;
    }
  }

  /** Write-intent sweep (every ~2 s): clears the groups no write touched since the last flush (VolumeFlush.sweepIntent). */
  sweepIntent(): Promise<number> {
    return this.flushes.sweepIntent();
  }

  /** After a map update changed replicas in place: flush groups follow the new replica set. */
  replicasChanged(): void {
    this.flushes.rebuild();
  }

  /**
   * Takes a newer map and lease epoch (the manager re-attached with a higher
   * epoch after the replica nodes were fenced with it). In-flight requests
   * finish on the old mirrors.
   */
  reconfigure(segments: Mirror[], epoch: number, generation: number, lease: 'held' | 'standby' = 'held', size = this._size): void {
    if (size < this._size || segments.length !== Math.ceil(size / this.chunkSize)) {
      throw new InvalidArgumentError(`volume ${this.name}: reconfigure with ${segments.length} segments for ${size} bytes, have ${this.segments.length} for ${this._size}`);
    }
    this.intent?.grow(segments.length); // a re-attach may carry a grown map (online resize)
    this._size = size;
    this.segments = segments;
    this.flushes.rebuild();
    this._epoch = epoch;
    this._generation = generation;
    if (lease === 'held' && this._lease !== 'held') this.stats.leaseAcquired += 1;
    this._lease = lease;
    this.fencedBy = undefined;
    this.wire(segments);
    if (lease === 'held') this.gate.granted(); // the grant: waiting requests go now
  }

  /** A map update with a newer generation (same epoch). */
  noteGeneration(generation: number): void {
    if (generation > this._generation) this._generation = generation;
  }

  get isDetached(): boolean {
    return this.detached;
  }

  /** @internal */
  detachedError(): IoError {
    return new IoError(`volume ${this.name} is detached from this head`, { volume: this.name });
  }
}
