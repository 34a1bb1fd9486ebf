import { ConflictError, InvalidArgumentError, IoError, StaleEpochError, TransportError, errorMessage } from '../../shared/errors.js';
import { ReadOnlyChunkError } from '../../shared/data-protocol/status.js';
import {
  mutationFailureError, rejectOnReplicaFailure, type ReplicaFailure, type ReplicaFailureHandler,
} from './failure-handler.js';
import { ForwardRouter, replicationMode } from './forward-group.js';
import { MutationOp, ReadOp, retriable } from './mirror-ops.js';
import { MutationTracker } from './mutation-tracker.js';
import { RegionLocks } from './region-locks.js';
import type { Replica } from './replica.js';
import type { SegmentIntent } from './write-intent.js';

// A segment of a volume: a mirror over its K replicas.
//  - Mutations (write, write-zeroes, discard) fan out to every writable
//    (in-sync or resyncing) replica and resolve when all have answered.
//  - Reads go to one in-sync replica: the one whose node has the fewest
//    outstanding requests, ties broken round-robin; a read that fails there
//    (I/O error, transport error) is retried on another replica.
// Each I/O is one small object that is its own completion callback, so the
// hot path creates no closure per replica request.
//
// A mutation takes the gated (async) path only when it must wait for
// something first: a write-intent MARK of a region not yet marked dirty
// (write-intent.ts), or the region locks of a resync in progress
// (region-locks.ts). Otherwise it is submitted synchronously, as before.
// A mutation that failed on some replicas, or skipped suspect ones (replicas
// this head saw fail), is acknowledged only when the ReplicaFailureHandler
// (failure-handler.ts) says so: for the reporting handler, once the manager
// recorded them stale (rule 2).
// With VSKY_REPLICATION=forward, a WRITE to more than one replica goes once,
// to the first writable replica, which forwards it (forward-group.ts).

export { MutationTracker, mutationFailureError, rejectOnReplicaFailure };

/** Whoever holds the lease epoch a mirror's mutations go out under: its volume. */
export interface EpochSource {
  readonly epoch: number;
}

/** A mirror not wired to a volume yet: epoch 0, which every node refuses. */
const NO_LEASE: EpochSource = Object.freeze({ epoch: 0 });
export type { ReplicaFailure, ReplicaFailureHandler };

/** What a gated mutation sends once its regions are marked and locked. */
const WRITE = 0;
const WRITE_ZEROES = 1;
const DISCARD = 2;

export class Mirror {
  readonly volumeName: string;
  readonly index: number;
  /** Replaced as a whole by a map update (applyReplicas); in-flight requests keep theirs. */
  replicas: readonly Replica[];
  readonly tracker: MutationTracker;
  readonly failureHandler: ReplicaFailureHandler;
  /**
   * Where the lease epoch comes from: the volume that owns this mirror (it
   * wires itself in). The one source of the epoch: a mutation takes it when
   * it begins and sends every request under it; failure reports carry it.
   */
  lease: EpochSource = NO_LEASE;
  /** Write-intent state of this segment (set by the volume), if write-intent is on. */
  intent: SegmentIntent | undefined;
  /** Region locks, only while a resync of this segment runs. */
  locks: RegionLocks | undefined;
  /** A replica refused our epoch: this head is fenced off the volume (set by the volume). */
  onFenced: ((err: Error) => void) | undefined;
  /** Set in forward mode: WRITEs go through a primary replica rather than to each (forward-group.ts). */
  readonly router = replicationMode() === 'forward' ? new ForwardRouter() : undefined;
  private rr = 0;

  constructor(
    volumeName: string, index: number, replicas: readonly Replica[],
    failureHandler: ReplicaFailureHandler = rejectOnReplicaFailure, tracker: MutationTracker = new MutationTracker(),
  ) {
    // No replica: an unallocated segment of a thin volume (LinearVolume never sends it I/O).
    if (replicas.length > 31) {
      throw new InvalidArgumentError(`segment ${index} of volume ${volumeName} has ${replicas.length} replicas (1..31 supported)`);
    }
    this.volumeName = volumeName;
    this.index = index;
    this.replicas = replicas;
    this.failureHandler = failureHandler;
    this.tracker = tracker;
  }

  get epoch(): number {
    return this.lease.epoch;
  }

  /** Reads dest.length bytes at `offset` within the segment into `dest`; resolves with dest. */
  read(offset: number, dest: Buffer): Promise<Buffer> {
    const op = new ReadOp(this, offset, dest);
    if (!this.submitRead(op)) {
      op.reject(new IoError(`segment ${this.index} of volume ${this.volumeName} has no in-sync replica to read from`, {
        volume: this.volumeName, segment: this.index,
      }));
    }
    return op.promise;
  }

  write(offset: number, data: Buffer, fua: boolean): Promise<void> {
    const epoch = this.lease.epoch;
    if (this.gated(offset, data.length)) return this.gatedMutation(WRITE, epoch, offset, data.length, data, fua);
    const op = this.begin(fua);
    if (!this.prepare(op, undefined)) return op.promise;
    if (this.router !== undefined && op.sent > 1) this.router.send(op, this.router.current(this.replicas), epoch, offset, data);
    else for (const r of this.replicas) if (r.writable) r.submitWrite(epoch, offset, data, fua, op);
    return op.promise;
  }

  writeZeroes(offset: number, length: number, fua: boolean): Promise<void> {
    const epoch = this.lease.epoch;
    if (this.gated(offset, length)) return this.gatedMutation(WRITE_ZEROES, epoch, offset, length, undefined, fua);
    const op = this.begin(fua);
    if (this.prepare(op, undefined)) for (const r of this.replicas) if (r.writable) r.submitWriteZeroes(epoch, offset, length, fua, op);
    return op.promise;
  }

  discard(offset: number, length: number): Promise<void> {
    const epoch = this.lease.epoch;
    if (this.gated(offset, length)) return this.gatedMutation(DISCARD, epoch, offset, length, undefined, false);
    const op = this.begin(false);
    if (this.prepare(op, undefined)) for (const r of this.replicas) if (r.writable) r.submitDiscard(epoch, offset, length, op);
    return op.promise;
  }

  /**
   * Picks the next replica for a read and submits it; false when every
   * readable replica was tried. Prefers replicas whose node is reachable, then
   * the fewest outstanding requests on that node, ties round-robin.
   */
  submitRead(op: ReadOp): boolean {
    const replicas = op.replicas;
    const n = replicas.length;
    const start = this.rr < n ? this.rr : 0;
    this.rr = start + 1 === n ? 0 : start + 1;
    let best = -1;
    let bestLoad = Infinity;
    let fallback = -1;
    for (let k = 0; k < n; k++) {
      const i = start + k < n ? start + k : start + k - n;
      const r = replicas[i]!;
      if (!r.readable || (op.tried & (1 << i)) !== 0) continue;
      if (!r.conn.available) {
        if (fallback < 0) fallback = i;
        continue;
      }
      const load = r.conn.outstanding;
      if (load < bestLoad) {
        best = i;
        bestLoad = load;
      }
    }
    if (best < 0) best = fallback;
    if (best < 0) return false;
    op.tried |= 1 << best;
    replicas[best]!.submitRead(op.offset, op.dest, op);
    return true;
  }

  /**
   * A mutation's life, and where each step happens (DRBD's drbd_req.h is the
   * model: one place changes a request's state):
   *  1. begun (begin): a tracker phase is open; FLUSH and resync barriers wait for it.
   *  2. waiting (gatedMutation, only when it must): its regions are marked
   *     dirty on every writable replica (write-intent, rule 4) and the region
   *     locks of a running resync are taken. A replica whose MARK failed is
   *     excluded and counted as failed.
   *  3. sent (prepare, then submit*): to every writable replica not excluded,
   *     all under the epoch taken at step 1. With none to send to, it
   *     completes at once with an error.
   *  4. answered (here): every replica answered; the outcome is decided:
   *     - all acknowledged and no suspect skipped: acknowledged;
   *     - any STALE_EPOCH: fenced, terminal for this writer (rule 3): never
   *       a failed replica dropped so the write can go on with the others;
   *     - every replica refused the request as bad: that error;
   *     - otherwise some replicas failed or suspects were skipped: the
   *       failure handler decides; the reporting handler acknowledges only
   *       once the manager durably recorded them stale (rule 2).
   *  5. completed (complete): exactly once, the only place a mutation ends.
   */
  answered(op: MutationOp): void {
    const failures = op.failures;
    if (failures === undefined && !op.skippedSuspects) return this.complete(op, undefined);
    if (failures !== undefined) {
      const fenced = failures.find((f) => f.error instanceof StaleEpochError);
      if (fenced !== undefined) return this.complete(op, this.fencedError(fenced));
      if (op.succeeded === 0 && failures.every((f) => f.error instanceof InvalidArgumentError)) return this.complete(op, failures[0]!.error);
      // A snapshot's chunk refused the write (READ_ONLY): a rule, not a failed replica.
      const readOnly = failures.find((f) => f.error instanceof ReadOnlyChunkError);
      if (readOnly !== undefined) return this.complete(op, readOnly.error);
    }
    let decided = failures !== undefined ? this.failureHandler.mutationFailed(this, failures, op.succeeded) : this.confirmSuspects();
    if (failures !== undefined && op.skippedSuspects) decided = decided.then(() => this.confirmSuspects());
    decided.then(() => this.complete(op, undefined), (err: unknown) => this.complete(op, err instanceof Error ? err : new IoError(String(err))));
  }

  /**
   * Step 5: ends the mutation's tracker phase and resolves or rejects it. A
   * StaleEpochError (a replica refused our epoch, a MARK did, or the manager
   * refused our failure report: our lease is gone) fences the volume.
   */
  private complete(op: MutationOp, err: Error | undefined): void {
    if (op.completed) return;
    op.completed = true;
    this.tracker.end(op.phase);
    if (err === undefined) return op.resolve();
    if (err instanceof StaleEpochError) this.onFenced?.(err);
    op.reject(err);
  }

  private fencedError(fenced: ReplicaFailure): StaleEpochError {
    return new StaleEpochError(
      `write to volume ${this.volumeName} refused: this head's lease epoch is stale (${errorMessage(fenced.error)})`,
      { volume: this.volumeName, segment: this.index, slot: fenced.replica.slot, node: fenced.replica.address },
    );
  }

  /** Resolves once every suspect replica of this mirror is durably out of sync. */
  confirmSuspects(): Promise<void> {
    const h = this.failureHandler;
    if (h.suspectsSkipped !== undefined) return h.suspectsSkipped(this);
    return Promise.reject(new IoError(`segment ${this.index} of volume ${this.volumeName}: a failed replica cannot be recorded stale`, {
      volume: this.volumeName, segment: this.index,
    }));
  }

  /** A read failed on some replicas and succeeded on another: the handler may report them. */
  readRecovered(failures: readonly ReplicaFailure[]): void {
    const reportable = failures.filter((f) => retriable(f.error));
    if (reportable.length > 0) this.failureHandler.readFailed?.(this, reportable);
  }

  readFailureError(failures: readonly ReplicaFailure[], last: Error): Error {
    if (!retriable(last)) return last;
    const parts = failures.map((f) => `${f.replica.describe()}: ${errorMessage(f.error)}`);
    return new IoError(
      `read from segment ${this.index} of volume ${this.volumeName} failed on every in-sync replica: ${parts.join('; ')}`,
      { volume: this.volumeName, segment: this.index, transport: failures.every((f) => f.error instanceof TransportError) },
      { cause: last },
    );
  }

  /**
   * Takes the new replica list of a map update. Requests already sent
   * complete against the replicas they were sent to; reads in progress keep
   * retrying within the list they started with.
   */
  applyReplicas(replicas: readonly Replica[]): void {
    if (replicas.length > 31) {
      throw new InvalidArgumentError(`segment ${this.index} of volume ${this.volumeName} has ${replicas.length} replicas (1..31 supported)`);
    }
    this.replicas = replicas;
  }

  /**
   * Installs (or joins) the region-lock table of a resync of this segment.
   * Mutations begun before it are not holding locks: the caller waits for
   * them with tracker.barrier() before copying.
   */
  beginResync(regionSize: number, regionCount: number): RegionLocks {
    let locks = this.locks;
    if (locks === undefined) {
      locks = new RegionLocks(regionSize, regionCount);
      this.locks = locks;
    } else if (locks.regionSize !== regionSize) {
      throw new ConflictError(`segment ${this.index} of volume ${this.volumeName}: a resync with region size ${locks.regionSize} is running`, {
        volume: this.volumeName, segment: this.index,
      });
    }
    locks.users++;
    return locks;
  }

  endResync(locks: RegionLocks): void {
    if (--locks.users === 0 && this.locks === locks) this.locks = undefined;
  }

  /** The mutation must wait (write-intent MARK or resync locks) before it is sent. */
  private gated(offset: number, length: number): boolean {
    return this.locks !== undefined || (this.intent !== undefined && !this.intent.covered(offset, length));
  }

  /**
   * The slow path of a mutation (step 2): mark its regions dirty on every
   * writable replica, take the resync region locks (if any), then send. The
   * final checks and the send happen in one synchronous run, so a
   * write-intent sweep cannot clear the regions, nor a resync start, in
   * between. Any error before sending completes the mutation with it.
   */
  private async gatedMutation(
    kind: number, epoch: number, offset: number, length: number, data: Buffer | undefined, fua: boolean,
  ): Promise<void> {
    const op = this.begin(fua);
    let held: RegionLocks | undefined;
    try {
      let excluded: ReplicaFailure[] | undefined;
      for (;;) {
        const intent = this.intent;
        if (intent !== undefined && !intent.covered(offset, length)) {
          const failed = await intent.mark(this, epoch, offset, length);
          for (const f of failed) if (excluded?.some((e) => e.replica === f.replica) !== true) (excluded ??= []).push(f);
          continue;
        }
        if (held !== this.locks) {
          held?.releaseShared(offset, length);
          held = this.locks;
          if (held !== undefined && !held.tryShared(offset, length)) {
            await held.acquireShared(offset, length);
            continue;
          }
        }
        break;
      }
      const router = this.router;
      if (this.prepare(op, excluded) && kind === WRITE && router !== undefined && op.sent > 1) {
        const members = this.replicas.filter((r) => r.writable && excluded?.some((e) => e.replica === r) !== true);
        router.send(op, excluded === undefined ? router.current(this.replicas) : router.subset(members), epoch, offset, data!);
      } else if (op.remaining > 0) {
        for (const r of this.replicas) {
          if (!r.writable || (excluded !== undefined && excluded.some((e) => e.replica === r))) continue;
          if (kind === WRITE) r.submitWrite(epoch, offset, data!, fua, op);
          else if (kind === WRITE_ZEROES) r.submitWriteZeroes(epoch, offset, length, fua, op);
          else r.submitDiscard(epoch, offset, length, op);
        }
      }
    } catch (err) {
      this.complete(op, err instanceof Error ? err : new IoError(String(err)));
    }
    try {
      await op.promise;
    } finally {
      held?.releaseShared(offset, length);
    }
  }

  /** Step 1. */
  private begin(fua: boolean): MutationOp {
    return new MutationOp(this, fua, this.tracker.begin());
  }

  /**
   * Step 3: counts the writable replicas not `excluded` (the MARK failures,
   * which count as failed) and arms the op for their answers; false (the op
   * completed with an error) when there is none to send to.
   */
  private prepare(op: MutationOp, excluded: ReplicaFailure[] | undefined): boolean {
    let count = 0;
    for (const r of this.replicas) {
      if (r.writable) {
        if (excluded === undefined || !excluded.some((e) => e.replica === r)) count++;
      } else if (r.suspect) {
        op.skippedSuspects = true;
      }
    }
    if (count === 0) {
      this.complete(op, excluded !== undefined ? mutationFailureError(this, excluded) : this.noWritableError());
      return false;
    }
    op.sent = count;
    op.remaining = count;
    if (excluded !== undefined) {
      op.failures = excluded.slice();
      op.preFailed = excluded.length;
    }
    return true;
  }

  private noWritableError(): IoError {
    return new IoError(`segment ${this.index} of volume ${this.volumeName} has no writable replica`, {
      volume: this.volumeName, segment: this.index,
    });
  }
}
