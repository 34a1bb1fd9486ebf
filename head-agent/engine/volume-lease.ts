import { ConflictError, IoError, StaleEpochError } from '../../shared/errors.js';
import type { LinearVolume } from './linear-volume.js';

// The lease gates of a volume (docs/leases.md): a standby's requests wait for
// the lease (one request to the manager shared by every waiting request), and
// a snapshot's pause (quiesce) holds new requests until it ends. Only the slow
// path comes here: a held volume's requests never do.

/**
 * A volume is 'held' here (I/O goes to storage under the epoch), a 'standby'
 * (attached for a live migration; its first read or write asks the manager for
 * the lease, which moves it here with a new epoch after the holder drained and
 * flushed), or 'fenced' (a replica answered "stale epoch", or the manager
 * revoked the lease: terminal, every request fails until the volume is
 * attached again).
 */
export type LeaseState = 'held' | 'standby' | 'fenced';

/** Asks the manager for the write lease of a standby volume; resolves once this head holds it. */
export type LeaseRequester = (volume: LinearVolume) => Promise<void>;

/** Requests on a standby waiting for the lease. */
export class LeaseWait {
  resolve!: () => void;
  reject!: (err: Error) => void;
  readonly promise = new Promise<void>((resolve, reject) => {
    this.resolve = resolve;
    this.reject = reject;
  });
}

/** A snapshot's pause: requests wait for `promise`, open() lets them go on. */
export interface Pause {
  promise: Promise<void>;
  open: () => void;
}

export class LeaseGate {
  /** A lease request in progress: I/O on a standby waits for the grant (or the request's end). */
  acquiring: LeaseWait | undefined;
  /** A snapshot's pause (quiesce): requests wait for it. */
  pause: Pause | undefined;

  constructor(private readonly v: LinearVolume) {}

  /**
   * Runs `fn` once this head holds the lease (the slow path of every request
   * on a standby). The waiting requests go on at the grant itself (the Attach
   * that fenced the nodes with our new epoch), in the same tick, so they are
   * in flight before any later release can be asked of us, which then waits
   * for them: under I/O on both heads every move lets the waiting requests
   * through. If the request ends without a grant here (moved on already), they
   * re-check and ask again; if it fails, they fail with its error.
   */
  after<T>(fn: () => Promise<T>): Promise<T> {
    const v = this.v;
    if (v.isDetached) return Promise.reject(v.detachedError());
    if (this.pause !== undefined) return this.pause.promise.then(() => v.resumed() ?? fn());
    if (v.lease === 'fenced') return Promise.reject(v.fencedError());
    let wait = this.acquiring;
    if (wait === undefined) {
      const requester = v.leaseRequester;
      if (requester === undefined) {
        return Promise.reject(new StaleEpochError(`volume ${v.name} is a standby on this head and cannot ask for the lease`, { volume: v.name }));
      }
      const w = new LeaseWait();
      this.acquiring = w;
      wait = w;
      requester(v).then(() => this.endWait(w), (err: unknown) => this.endWait(w, err));
    }
    return wait.promise.then(fn);
  }

  /** Lets the requests waiting on `w` go on (or fail with `err`), if it is still the current wait. */
  endWait(w: LeaseWait, err?: unknown): void {
    if (this.acquiring !== w) return;
    this.acquiring = undefined;
    if (err === undefined) w.resolve();
    else w.reject(err instanceof Error ? err : new IoError(String(err)));
  }

  /** The grant: the requests waiting for the lease go now. */
  granted(): void {
    if (this.acquiring !== undefined) this.endWait(this.acquiring);
  }

  /** Starts a pause (the caller checked there is none). */
  startPause(): void {
    let open!: () => void;
    const promise = new Promise<void>((resolve) => { open = resolve; });
    this.pause = { promise, open };
  }

  /**
   * Gives up the lease (a standby head asked for it): new requests wait for
   * the lease to come back, the mutations in flight finish, every node is
   * flushed and the write-intent bits cleared (nothing is half-written, so
   * the next holder has nothing to reconcile). Then the volume is a standby.
   */
  async release(): Promise<void> {
    const v = this.v;
    if (v.lease !== 'held') return;
    v.setLease('standby');
    try {
      await v.tracker.idle();
      await v.flushes.flush(v.epoch);
    } catch (err) {
      if ((v.lease as LeaseState) === 'standby') v.setLease('held'); // not released: keep serving under our epoch
      throw err;
    }
    v.stats.leaseReleased += 1;
    await v.intent?.clearAll(v.mirrors(), v.epoch).catch(() => undefined);
  }

  /**
   * Snapshot of an attached volume (docs/snapshots.md): new requests wait
   * (the volume is a standby that asks no one for the lease), first-write
   * allocations, segment frees, copy-ups and mutations in flight finish, every
   * node is flushed. A write is thus either acknowledged before (in the
   * snapshot) or starts after (not in it). unquiesce() lets the waiting go on.
   */
  async quiesce(): Promise<void> {
    const v = this.v;
    if (v.lease !== 'held' || this.pause !== undefined) {
      throw new ConflictError(`volume ${v.name} is ${this.pause !== undefined ? 'already paused' : `a ${v.lease}`} on this head: it cannot be paused for a snapshot`, { volume: v.name });
    }
    this.startPause();
    v.setLease('standby');
    try {
      await Promise.allSettled(v.thinSegments.inFlight());
      await v.backing?.idle();
      await v.tracker.idle();
      await v.flushes.flush(v.epoch);
    } catch (err) {
      this.unquiesce();
      throw err;
    }
    await v.intent?.clearAll(v.mirrors(), v.epoch).catch(() => undefined);
  }

  /** Ends a pause (the snapshot was taken, or failed): the waiting requests go on. */
  unquiesce(): void {
    const p = this.pause;
    if (p === undefined) return;
    this.pause = undefined;
    if (this.v.lease === 'standby') this.v.setLease('held');
    p.open();
  }
}
