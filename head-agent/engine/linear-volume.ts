import { MAX_DATA_PAYLOAD } from '../../shared/constants.js';
import { CapacityError, ConflictError, InvalidArgumentError, IoError, StaleEpochError, errorMessage } from '../../shared/errors.js';
import { mayDeallocate } from '../../shared/deallocation.js';
import type { AllocationExtent, BlockDevice } from './block-device.js';
import { ZEROS, type Backing } from './backing.js';
import { MutationTracker, type Mirror } from './mirror.js';
import type { Replica } from './replica.js';
import { VolumeFlush } from './volume-flush.js';
import { VolumeStats } from './volume-stats.js';
import { WriteIntent } from './write-intent.js';
import type { WrittenRegions } from './written-regions.js';

// A volume: a linear run of segments of `chunkSize` bytes, each a mirror.
// Requests are bounds-checked, then split at segment boundaries and at the
// protocol's payload limit. A read allocates ONE destination buffer and every
// piece fills its own slice of it; a write hands each piece a subarray view of
// the caller's buffer (no copies). Every mutating request carries the lease
// epoch this head holds for the volume. The volume owns the write-intent
// state of its segments (it outlives a re-attach with a newer epoch).
//
// Lease (docs/leases.md): a volume is 'held' here (I/O goes to storage under
// the epoch), a 'standby' (attached for a live migration; its first read or
// write asks the manager for the lease, which moves it here with a new epoch
// after the holder drained and flushed), or 'fenced' (a replica answered
// "stale epoch", or the manager revoked the lease: terminal, every request
// fails until the volume is attached again). Only 'held' is on the hot path:
// one field compare.

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

export type LeaseState = 'held' | 'standby' | 'fenced';

/** Asks the manager for the write lease of a standby volume; resolves once this head holds it. */
export type LeaseRequester = (volume: LinearVolume) => Promise<void>;

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
  private readonly flushes: VolumeFlush;
  private readonly maxPiece: number;
  private detached = false;
  private _lease: LeaseState;
  private fencedBy: Error | undefined;
  /** A lease request in progress: I/O on a standby waits for the grant (or the request's end). */
  private acquiring: LeaseWait | undefined;
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
  /** A snapshot's pause (quiesce): requests wait for it. */
  private pause: { promise: Promise<void>; open: () => void } | undefined;
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
   * flushed and the write-intent bits cleared (nothing is half-written, so
   * the next holder has nothing to reconcile). Then the volume is a standby.
   */
  async release(): Promise<void> {
    if (this._lease !== 'held') return;
    this._lease = 'standby';
    try {
      await this.tracker.idle();
      await this.flushes.flush(this._epoch);
    } catch (err) {
      if (this._lease === 'standby') this._lease = 'held'; // not released: keep serving under our epoch
      throw err;
    }
    this.stats.leaseReleased += 1;
    await this.intent?.clearAll(this.segments, this._epoch).catch(() => undefined);
  }

  /**
   * Snapshot of an attached volume (docs/snapshots.md): new requests wait
   * (the volume is a standby that asks no one for the lease), first-write
   * allocations, segment frees, copy-ups and mutations in flight finish, every
   * node is flushed. A write is thus either acknowledged before (in the
   * snapshot) or starts after (not in it). unquiesce() lets the waiting go on.
   */
  async quiesce(): Promise<void> {
    if (this._lease !== 'held' || this.pause !== undefined) {
      throw new ConflictError(`volume ${this.name} is ${this.pause !== undefined ? 'already paused' : `a ${this._lease}`} on this head: it cannot be paused for a snapshot`, { volume: this.name });
    }
    let open!: () => void;
    const promise = new Promise<void>((resolve) => { open = resolve; });
    this.pause = { promise, open };
    this._lease = 'standby';
    try {
      await Promise.allSettled([...this.allocating.values(), ...this.gates.values()]);
      await this.backing?.idle();
      await this.tracker.idle();
      await this.flushes.flush(this._epoch);
    } catch (err) {
      this.unquiesce();
      throw err;
    }
    await this.intent?.clearAll(this.segments, this._epoch).catch(() => undefined);
  }

  /** Ends a pause (the snapshot was taken, or failed): the waiting requests go on. */
  unquiesce(): void {
    const p = this.pause;
    if (p === undefined) return;
    this.pause = undefined;
    if (this._lease === 'standby') this._lease = 'held';
    p.open();
  }

  get isQuiesced(): boolean {
    return this.pause !== undefined;
  }

  /**
   * Runs `fn` once this head holds the lease (the slow path of every request
   * on a standby). The waiting requests go on at the grant itself (the Attach
   * that fenced the nodes with our new epoch), in the same tick, so they are
   * in flight before any later release can be asked of us, which then waits
   * for them: under I/O on both heads every move lets the waiting requests
   * through. If the request ends without a grant here (moved on already), they
   * re-check and ask again; if it fails, they fail with its error.
   */
  private afterLease<T>(fn: () => Promise<T>): Promise<T> {
    if (this.detached) return Promise.reject(this.detachedError());
    if (this.pause !== undefined) return this.pause.promise.then(() => this.resumed() ?? fn());
    if (this._lease === 'fenced') return Promise.reject(this.fencedError());
    let wait = this.acquiring;
    if (wait === undefined) {
      const requester = this.leaseRequester;
      if (requester === undefined) {
        return Promise.reject(new StaleEpochError(`volume ${this.name} is a standby on this head and cannot ask for the lease`, { volume: this.name }));
      }
      const w = new LeaseWait();
      this.acquiring = w;
      wait = w;
      requester(this).then(() => this.endWait(w), (err: unknown) => this.endWait(w, err));
    }
    return wait.promise.then(fn);
  }

  /** Lets the requests waiting on `w` go on (or fail with `err`), if it is still the current wait. */
  private endWait(w: LeaseWait, err?: unknown): void {
    if (this.acquiring !== w) return;
    this.acquiring = undefined;
    if (err === undefined) w.resolve();
    else w.reject(err instanceof Error ? err : new IoError(String(err)));
  }

  private fencedError(): StaleEpochError {
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
    if (this._lease !== 'held') return this.afterLease(() => this.read(offset, length));
    const bad = this.check(offset, length);
    if (bad !== undefined) return Promise.reject(bad);
    return this.readPieces(offset, Buffer.allocUnsafe(length));
  }

  /**
   * Reads dest.length bytes at `offset` into a caller-owned buffer; resolves
   * with `dest`. Not in BlockDevice: an export that recycles its reply buffers
   * can use it to avoid a fresh 64 KiB allocation per read (buffers that live
   * across ticks are promoted and drive V8 into frequent mark-compacts).
   */
  readInto(offset: number, dest: Buffer): Promise<Buffer> {
    if (this._lease !== 'held') return this.afterLease(() => this.readInto(offset, dest));
    const bad = this.check(offset, dest.length);
    if (bad !== undefined) return Promise.reject(bad);
    return this.readPieces(offset, dest);
  }

  private readPieces(offset: number, dest: Buffer): Promise<Buffer> {
    const length = dest.length;
    if (length === 0) return Promise.resolve(dest);
    const cs = this.chunkSize;
    const seg = Math.floor(offset / cs);
    const segOff = offset - seg * cs;
    // Fast path: one piece (the common case), no array, no extra promise.
    if (segOff + length <= cs && length <= this.maxPiece) return this.readSegment(seg, segOff, dest);
    const pieces: Promise<unknown>[] = [];
    for (let pos = 0; pos < length;) {
      const at = offset + pos;
      const s = Math.floor(at / cs);
      const so = at - s * cs;
      const n = Math.min(length - pos, cs - so, this.maxPiece);
      pieces.push(this.readSegment(s, so, dest.subarray(pos, pos + n)));
      pos += n;
    }
    return settleAll(pieces).then(() => dest);
  }

  write(offset: number, data: Buffer, fua: boolean): Promise<void> {
    if (this._lease !== 'held') return this.afterLease(() => this.write(offset, data, fua));
    const length = data.length;
    const bad = this.check(offset, length);
    if (bad !== undefined) return Promise.reject(bad);
    if (length === 0) return Promise.resolve();
    const cs = this.chunkSize;
    const seg = Math.floor(offset / cs);
    const segOff = offset - seg * cs;
    if (segOff + length <= cs && length <= this.maxPiece) return this.writeSegment(seg, segOff, data, fua);
    const pieces: Promise<void>[] = [];
    for (let pos = 0; pos < length;) {
      const at = offset + pos;
      const s = Math.floor(at / cs);
      const so = at - s * cs;
      const n = Math.min(length - pos, cs - so, this.maxPiece);
      pieces.push(this.writeSegment(s, so, data.subarray(pos, pos + n), fua));
      pos += n;
    }
    return settleAll(pieces);
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
    if (this._lease !== 'held') return this.afterLease(() => this.writeZeroes(offset, length, fua));
    if (!mayDeallocate(this)) return this.zeroBacked(offset, length, fua);
    if (this.thin) return this.zeroed(offset, length, this.thinZero(offset, length, (m, so, n) => m.writeZeroes(so, n, fua)));
    return this.zeroed(offset, length, this.forEachPiece(offset, length, (m, so, n) => m.writeZeroes(so, n, fua)));
  }

  discard(offset: number, length: number): Promise<void> {
    if (this._lease !== 'held') return this.afterLease(() => this.discard(offset, length));
    if (!mayDeallocate(this)) return this.zeroBacked(offset, length, false);
    if (this.thin) return this.zeroed(offset, length, this.thinZero(offset, length, (m, so, n) => m.discard(so, n)));
    return this.zeroed(offset, length, this.forEachPiece(offset, length, (m, so, n) => m.discard(so, n)));
  }

  /** After a discard or write-zeroes: the regions it covered whole read zeros (block status). */
  private zeroed(offset: number, length: number, done: Promise<void>): Promise<void> {
    return this.regions === undefined ? done : done.then(() => this.regions?.noteZeroed(this.chunkSize, offset, length));
  }

  /** What [offset, offset + length) holds (BlockDevice.allocationStatus; written-regions.ts). */
  allocationStatus(offset: number, length: number): Promise<AllocationExtent[]> {
    const bad = this.check(offset, length);
    if (bad !== undefined) return Promise.reject(bad);
    if (this.regions === undefined) return Promise.resolve([{ length, flags: 0 }]);
    return this.regions.status(this, offset, length);
  }

  /** Flatten: resolves once segment s has chunks (a first-write allocation when it has none). */
  ensureAllocated(s: number): Promise<void> {
    return this.isAllocated(s) ? Promise.resolve() : this.allocate(s);
  }

  /** Whether the segment has chunks (a thick volume's always have). */
  isAllocated(segment: number): boolean {
    return (this.segments[segment]?.replicas.length ?? 0) > 0;
  }

  /** The run of segments from `offset` that share its allocation (BlockDevice.extentAt). */
  extentAt(offset: number): { allocated: boolean; length: number } {
    // Only the holder's map is current (a standby's may predate allocations): otherwise "allocated", which is always safe.
    if (this._lease !== 'held' || !this.thin || this.backing !== undefined) return { allocated: true, length: this._size - offset };
    const cs = this.chunkSize;
    let s = Math.floor(offset / cs);
    const allocated = this.isAllocated(s);
    while (s + 1 < this.segments.length && this.isAllocated(s + 1) === allocated) s++;
    return { allocated, length: Math.min(this._size, (s + 1) * cs) - offset };
  }

  /** Segments with chunks. */
  allocatedSegments(): number {
    let n = 0;
    for (const m of this.segments) if (m.replicas.length > 0) n++;
    return n;
  }

  // Thin volumes (docs/thin-provisioning.md). An unallocated segment (a mirror
  // without replicas) reads zeros here, with no round trip; its first write
  // waits for the allocator (one allocation per segment, shared by every write
  // that waits). A segment being freed holds its I/O until it is done.

  private readSegment(s: number, so: number, dest: Buffer): Promise<Buffer> {
    if (this.gates.size !== 0) {
      const gate = this.gates.get(s);
      if (gate !== undefined) return gate.then(() => this.resumed() ?? this.readSegment(s, so, dest));
    }
    const m = this.segments[s]!;
    if (this.backing !== undefined) return this.backing.read(m, s, so, dest);
    if (m.replicas.length === 0) {
      dest.fill(0);
      return Promise.resolve(dest);
    }
    return m.read(so, dest);
  }

  private writeSegment(s: number, so: number, data: Buffer, fua: boolean): Promise<void> {
    if (this.gates.size !== 0) {
      const gate = this.gates.get(s);
      if (gate !== undefined) return gate.then(() => this.resumed() ?? this.writeSegment(s, so, data, fua));
    }
    const m = this.segments[s]!;
    if (m.replicas.length === 0) return this.allocate(s).then(() => this.resumed() ?? this.writeSegment(s, so, data, fua));
    if (this.trimmed.size !== 0) this.trimmed.delete(s);
    this.regions?.noteWrite(s, so, data.length);
    if (this.backing !== undefined) return this.backing.write(m, s, so, data, fua, Math.min(this.chunkSize, this._size - s * this.chunkSize));
    return m.write(so, data, fua);
  }

  /** After a wait: the error to fail with if the volume cannot take the request any more. */
  private resumed(): Promise<never> | undefined {
    if (this.detached) return Promise.reject(this.detachedError());
    if (this._lease === 'fenced') return Promise.reject(this.fencedError());
    return undefined;
  }

  private allocate(s: number): Promise<void> {
    let p = this.allocating.get(s);
    if (p !== undefined) return p;
    const allocator = this.allocator;
    p = allocator === undefined
      ? Promise.reject(new CapacityError(`volume ${this.name}: segment ${s} has no chunks and this head cannot allocate any`, { volume: this.name, segment: s }))
      : allocator.allocate(this, s);
    p = p.then(() => {
      if (!this.isAllocated(s)) throw new CapacityError(`volume ${this.name}: segment ${s} still has no chunks after its allocation`, { volume: this.name, segment: s });
    });
    const done = p.finally(() => this.allocating.delete(s));
    done.catch(() => undefined);
    this.allocating.set(s, done);
    return done;
  }

  /**
   * DISCARD / WRITE_ZEROES on a thin volume: unallocated segments already
   * read zeros (nothing to send); a segment the range covers whole is
   * discarded on every replica and then given back (freeSegment); the rest
   * goes to the replicas as usual (the nodes clear whole regions, zero partial ones).
   */
  private thinZero(offset: number, length: number, fn: (m: Mirror, segOff: number, n: number) => Promise<void>): Promise<void> {
    const cs = this.chunkSize;
    return this.forEachPiece(offset, length, (m, so, n) => {
      const s = m.index;
      if (m.replicas.length === 0 && !this.gates.has(s)) return Promise.resolve();
      const whole = so === 0 && (n === cs || s * cs + n === this._size) && this.allocator !== undefined;
      if (whole) return this.freeSegment(s);
      if (this.gates.size !== 0) {
        const gate = this.gates.get(s);
        if (gate !== undefined) return gate.then(() => this.resumed() ?? (this.isAllocated(s) ? this.inPieces(this.segments[s]!, so, n, fn) : undefined));
      }
      return this.inPieces(m, so, n, fn).then(() => this.noteTrimmed(s, so, n));
    }, true);
  }

  /**
   * DISCARD / WRITE_ZEROES on a volume with a backing: zeros are written (a
   * freed segment or cleared written bit would expose the backing's data);
   * segments with nothing allocated anywhere in the chain already read zeros.
   */
  private zeroBacked(offset: number, length: number, fua: boolean): Promise<void> {
    const backing = this.backing!;
    return this.forEachPiece(offset, length, (m, so, n) => {
      const s = m.index;
      if (m.replicas.length === 0 && backing.chainEmpty(s)) return Promise.resolve();
      const step = Math.min(ZEROS.length, this.maxPiece);
      const pieces: Promise<void>[] = [];
      for (let at = 0; at < n; at += step) pieces.push(this.writeSegment(s, so + at, ZEROS.subarray(0, Math.min(step, n - at)), fua));
      return settleAll(pieces);
    }, true);
  }

  /** Records a discarded range of segment s; frees the segment once all of it was discarded since its last write. */
  private noteTrimmed(s: number, so: number, n: number): Promise<void> | undefined {
    if (this.allocator === undefined || !this.isAllocated(s)) return undefined;
    let t = this.trimmed.get(s);
    if (t === undefined) this.trimmed.set(s, (t = new TrimmedRanges()));
    t.add(so, so + n);
    if (!t.covers(Math.min(this.chunkSize, this._size - s * this.chunkSize))) return undefined;
    this.trimmed.delete(s);
    return this.freeSegment(s);
  }

  /** Sends [so, so + n) of one segment in pieces under the payload limit. */
  private inPieces(m: Mirror, so: number, n: number, fn: (m: Mirror, segOff: number, n: number) => Promise<void>): Promise<void> {
    if (n <= this.maxPiece) return fn(m, so, n);
    const pieces: Promise<void>[] = [];
    for (let at = 0; at < n; at += this.maxPiece) pieces.push(fn(m, so + at, Math.min(this.maxPiece, n - at)));
    return settleAll(pieces);
  }

  /**
   * Frees a whole segment: its I/O waits (gate); mutations already in flight
   * finish; every replica discards the whole chunk (it reads zeros: rule 7
   * holds before the manager hands the chunks out again, and the node scrubs
   * them when it frees them); then the allocator asks the manager to free it.
   * If the manager cannot be asked, the segment stays allocated and reads
   * zeros: the discard still succeeded.
   */
  private freeSegment(s: number): Promise<void> {
    const pending = this.gates.get(s);
    if (pending !== undefined) return pending;
    let open!: () => void;
    const gate = new Promise<void>((resolve) => { open = resolve; });
    this.gates.set(s, gate);
    const run = (async () => {
      await this.tracker.barrier();
      const m = this.segments[s]!;
      if (m.replicas.length === 0) return;
      const end = Math.min(this.chunkSize, this._size - s * this.chunkSize);
      const pieces: Promise<void>[] = [];
      for (let at = 0; at < end; at += this.maxPiece) pieces.push(m.discard(at, Math.min(this.maxPiece, end - at)));
      await settleAll(pieces);
      await this.allocator!.free(this, s);
    })();
    const done = run.finally(() => {
      this.gates.delete(s);
      open();
    });
    return done;
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
   * then (unless `force`) flush every node. If that flush fails the volume
   * reopens and the error is thrown (the caller may retry, or force).
   */
  async close(force: boolean): Promise<void> {
    this.detached = true;
    if (force) return;
    await this.tracker.idle();
    try {
      await this.flushes.flush(this._epoch);
    } catch (err) {
      this.detached = false;
      throw err;
    }
    // Clean detach: everything written is flushed and nothing is in flight, so
    // no region needs reconciling (best effort: a bit left set only costs a copy).
    await this.intent?.clearAll(this.segments, this._epoch).catch(() => undefined);
  }

  /**
   * Write-intent sweep (the attachments call it every ~2 s): clears the dirty
   * groups that saw no write since the last completed flush. Resolves with
   * the number cleared.
   */
  sweepIntent(): Promise<number> {
    const intent = this.intent;
    // Only the holder clears bits: a standby's epoch may still be current, and its clears would erase the holder's marks.
    if (intent === undefined || this.detached || this._lease !== 'held') return Promise.resolve(0);
    return intent.sweep(() => this.segments, () => this._epoch, () => this.tracker.barrier(), () => {
      if (this.detached) return Promise.reject(this.detachedError());
      return this.flushes.flush(this._epoch);
    });
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
    if (lease === 'held' && this.acquiring !== undefined) this.endWait(this.acquiring); // the grant: waiting requests go now
  }

  /** A map update with a newer generation (same epoch). */
  noteGeneration(generation: number): void {
    if (generation > this._generation) this._generation = generation;
  }

  get isDetached(): boolean {
    return this.detached;
  }

  private forEachPiece(
    offset: number, length: number, fn: (m: Mirror, segOff: number, n: number) => Promise<void>, wholeSegments = false,
  ): Promise<void> {
    const bad = this.check(offset, length);
    if (bad !== undefined) return Promise.reject(bad);
    if (length === 0) return Promise.resolve();
    const cs = this.chunkSize;
    const pieces: Promise<void>[] = [];
    for (let pos = 0; pos < length;) {
      const at = offset + pos;
      const s = Math.floor(at / cs);
      const so = at - s * cs;
      // Thin zeroing takes a segment in one piece (freeSegment splits it); mutations stay under the payload limit.
      const n = Math.min(length - pos, cs - so, wholeSegments ? cs : this.maxPiece);
      pieces.push(fn(this.segments[s]!, so, n));
      pos += n;
    }
    return pieces.length === 1 ? pieces[0]! : settleAll(pieces);
  }

  private check(offset: number, length: number): Error | undefined {
    if (this.detached) return this.detachedError();
    if (!Number.isSafeInteger(offset) || offset < 0 || !Number.isSafeInteger(length) || length < 0) {
      return new InvalidArgumentError(`volume ${this.name}: invalid offset ${offset} or length ${length}`, { volume: this.name, offset, length });
    }
    if (offset + length > this.size) {
      return new InvalidArgumentError(
        `volume ${this.name}: request out of range (offset ${offset} + length ${length} > size ${this.size})`,
        { volume: this.name, offset, length, size: this.size },
      );
    }
    return undefined;
  }

  private detachedError(): IoError {
    return new IoError(`volume ${this.name} is detached from this head`, { volume: this.name });
  }
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

/** Requests on a standby waiting for the lease. */
class LeaseWait {
  resolve!: () => void;
  reject!: (err: Error) => void;
  readonly promise = new Promise<void>((resolve, reject) => {
    this.resolve = resolve;
    this.reject = reject;
  });
}

/**
 * Resolves when every piece succeeded; rejects with the first failure, but
 * only once every piece has settled: no piece may still be writing into the
 * caller's buffer, or onto a replica, after the request was answered (a client
 * retrying a failed write must not race its own earlier pieces).
 */
async function settleAll(pieces: Promise<unknown>[]): Promise<void> {
  const results = await Promise.allSettled(pieces);
  for (const r of results) if (r.status === 'rejected') throw r.reason;
}

/** One flush group per storage node holding a replica (by data address). */
