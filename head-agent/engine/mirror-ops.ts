import { InvalidArgumentError } from '../../shared/errors.js';
import type { RequestCallback, RequestTarget } from '../../shared/data-protocol/client/data-request.js';
import type { ReplicaFailure } from './failure-handler.js';
import { ForwardGroup, settleForward } from './forward-group.js';
import type { Mirror } from './mirror.js';
import type { Replica } from './replica.js';

// The per-I/O objects of a Mirror (mirror.ts): each is its own completion
// callback, so the hot path creates no closure per replica request.

/** Read failures worth retrying on another replica (anything but a bad request). */
export function retriable(err: Error): boolean {
  return !(err instanceof InvalidArgumentError);
}

/** One mutation (write, write-zeroes, discard) of one segment: see "A mutation's life" above Mirror.answered. */
export class MutationOp implements RequestCallback {
  private readonly mirror: Mirror;
  readonly fua: boolean;
  /** Tracker phase (MutationTracker.begin): FLUSH and resync barriers wait for it. */
  readonly phase: number;
  /** Replicas the mutation was sent to. */
  sent = 0;
  /** Suspect replicas were skipped: acknowledge only once they are recorded stale. */
  skippedSuspects = false;
  remaining = 0;
  /** Replica failures, including those that failed before sending (write-intent MARK). */
  failures: ReplicaFailure[] | undefined;
  preFailed = 0;
  /** Set once, by Mirror.complete. */
  completed = false;
  /** Forward mode: what a re-send after a failed primary needs (forward-group.ts). */
  epoch = 0;
  offset = 0;
  data: Buffer | undefined;
  resolve!: () => void;
  reject!: (err: Error) => void;
  readonly promise: Promise<void>;

  constructor(mirror: Mirror, fua: boolean, phase: number) {
    this.mirror = mirror;
    this.fua = fua;
    this.phase = phase;
    this.promise = new Promise<void>((resolve, reject) => {
      this.resolve = resolve;
      this.reject = reject;
    });
  }

  /** Replicas that acknowledged (valid once every request answered). */
  get succeeded(): number {
    return this.sent - ((this.failures?.length ?? 0) - this.preFailed);
  }

  requestDone(target: RequestTarget, err: Error | undefined): void {
    if (target instanceof ForwardGroup) {
      const rest = settleForward(target, err, this.fua, (this.failures ??= []));
      if (this.failures.length === 0) this.failures = undefined;
      if (rest !== undefined && rest.length > 0) return this.mirror.router!.resend(this, rest);
      this.remaining = 0;
      return this.mirror.answered(this);
    }
    const replica = target as Replica;
    replica.noteWritten(this.fua);
    if (err !== undefined) (this.failures ??= []).push({ replica, error: err });
    if (--this.remaining === 0) this.mirror.answered(this);
  }
}

export class ReadOp implements RequestCallback {
  private readonly mirror: Mirror;
  /** The mirror's replica list when the read began (a map update replaces the list, not this). */
  readonly replicas: readonly Replica[];
  readonly offset: number;
  readonly dest: Buffer;
  /** Bit i set: replicas[i] was tried. */
  tried = 0;
  private failures: ReplicaFailure[] | undefined;
  resolve!: (data: Buffer) => void;
  reject!: (err: Error) => void;
  readonly promise: Promise<Buffer>;

  constructor(mirror: Mirror, offset: number, dest: Buffer) {
    this.mirror = mirror;
    this.replicas = mirror.replicas;
    this.offset = offset;
    this.dest = dest;
    this.promise = new Promise<Buffer>((resolve, reject) => {
      this.resolve = resolve;
      this.reject = reject;
    });
  }

  requestDone(target: RequestTarget, err: Error | undefined): void {
    const replica = target as Replica;
    if (err === undefined) {
      replica.reads++;
      if (this.failures !== undefined) this.mirror.readRecovered(this.failures);
      this.resolve(this.dest);
      return;
    }
    (this.failures ??= []).push({ replica, error: err });
    if (!retriable(err) || !this.mirror.submitRead(this)) {
      this.reject(this.mirror.readFailureError(this.failures, err));
    }
  }
}

