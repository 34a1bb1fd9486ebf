import { InvalidArgumentError, IoError, StaleEpochError, TransportError, errorMessage } from '../shared/errors.js';
import type { RequestCallback, RequestTarget } from './data-request.js';
import type { Replica } from './replica.js';

// A segment of a volume: a mirror over its K replicas.
//  - Mutations (write, write-zeroes, discard) fan out to every writable
//    (in-sync or resyncing) replica and resolve when all have answered.
//  - Reads go to one in-sync replica: the one whose node has the fewest
//    outstanding requests, ties broken round-robin; a read that fails there
//    (I/O error, transport error) is retried on another replica.
// Each I/O is one small object that is its own completion callback, so the
// hot path creates no closure per replica request.

export interface ReplicaFailure {
  readonly replica: Replica;
  readonly error: Error;
}

/**
 * Decides what a mutation that failed on some replicas becomes. This is the
 * seam for degraded writes: a later handler marks the failed replicas stale
 * durably (through the manager) and then resolves, so the write is
 * acknowledged on the survivors (DESIGN rule 2: stale-marking comes BEFORE the
 * acknowledgement). The default rejects. Never consulted for StaleEpochError
 * (this head was fenced off: nothing may be acknowledged).
 */
export interface ReplicaFailureHandler {
  mutationFailed(mirror: Mirror, failures: readonly ReplicaFailure[], succeeded: number): Promise<void>;
}

/** The default of this issue: any replica failure fails the write. */
export const rejectOnReplicaFailure: ReplicaFailureHandler = {
  mutationFailed(mirror, failures) {
    return Promise.reject(mutationFailureError(mirror, failures));
  },
};

/** IoError naming every replica that failed (the first error is the cause). */
export function mutationFailureError(mirror: Mirror, failures: readonly ReplicaFailure[]): IoError {
  const parts = failures.map((f) => `${f.replica.describe()}: ${errorMessage(f.error)}`);
  return new IoError(
    `write to segment ${mirror.index} of volume ${mirror.volumeName} failed on ${failures.length} replica(s): ${parts.join('; ')}`,
    {
      volume: mirror.volumeName, segment: mirror.index,
      replicas: failures.map((f) => ({ slot: f.replica.slot, node: f.replica.address, error: errorMessage(f.error) })),
    },
    { cause: failures[0]?.error },
  );
}

/**
 * Mutations in flight on a volume (shared by its mirrors): detach waits for
 * them to settle before the final flush, so no acknowledged write is left
 * out of it.
 */
export class MutationTracker {
  private active = 0;
  private waiters: (() => void)[] = [];

  get inFlight(): number {
    return this.active;
  }

  begin(): void {
    this.active++;
  }

  end(): void {
    if (--this.active === 0 && this.waiters.length > 0) {
      const waiters = this.waiters;
      this.waiters = [];
      for (const w of waiters) w();
    }
  }

  /** Resolves once nothing is in flight. */
  idle(): Promise<void> {
    if (this.active === 0) return Promise.resolve();
    return new Promise((resolve) => this.waiters.push(resolve));
  }
}

/** Read failures worth retrying on another replica (anything but a bad request). */
function retriable(err: Error): boolean {
  return !(err instanceof InvalidArgumentError);
}

class MutationOp implements RequestCallback {
  private readonly mirror: Mirror;
  private readonly fua: boolean;
  private remaining: number;
  private failures: ReplicaFailure[] | undefined;
  resolve!: () => void;
  reject!: (err: Error) => void;
  readonly promise: Promise<void>;

  constructor(mirror: Mirror, fua: boolean, count: number) {
    this.mirror = mirror;
    this.fua = fua;
    this.remaining = count;
    this.promise = new Promise<void>((resolve, reject) => {
      this.resolve = resolve;
      this.reject = reject;
    });
  }

  requestDone(target: RequestTarget, err: Error | undefined): void {
    const replica = target as Replica;
    replica.noteWritten(this.fua);
    if (err !== undefined) (this.failures ??= []).push({ replica, error: err });
    if (--this.remaining !== 0) return;
    if (this.failures === undefined) {
      this.mirror.tracker.end();
      this.resolve();
    } else {
      this.mirror.settleFailedMutation(this.failures, this);
    }
  }
}

class ReadOp implements RequestCallback {
  private readonly mirror: Mirror;
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
      this.resolve(this.dest);
      return;
    }
    (this.failures ??= []).push({ replica, error: err });
    if (!retriable(err) || !this.mirror.submitRead(this)) {
      this.reject(this.mirror.readFailureError(this.failures, err));
    }
  }
}

export class Mirror {
  readonly volumeName: string;
  readonly index: number;
  readonly replicas: readonly Replica[];
  readonly tracker: MutationTracker;
  private readonly failureHandler: ReplicaFailureHandler;
  private rr = 0;

  constructor(
    volumeName: string, index: number, replicas: readonly Replica[],
    failureHandler: ReplicaFailureHandler = rejectOnReplicaFailure, tracker: MutationTracker = new MutationTracker(),
  ) {
    if (replicas.length === 0 || replicas.length > 31) {
      throw new InvalidArgumentError(`segment ${index} of volume ${volumeName} has ${replicas.length} replicas (1..31 supported)`);
    }
    this.volumeName = volumeName;
    this.index = index;
    this.replicas = replicas;
    this.failureHandler = failureHandler;
    this.tracker = tracker;
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

  write(epoch: number, offset: number, data: Buffer, fua: boolean): Promise<void> {
    const op = this.startMutation(fua);
    if (op === undefined) return this.noWritableReplica();
    for (const r of this.replicas) if (r.writable) r.submitWrite(epoch, offset, data, fua, op);
    return op.promise;
  }

  writeZeroes(epoch: number, offset: number, length: number, fua: boolean): Promise<void> {
    const op = this.startMutation(fua);
    if (op === undefined) return this.noWritableReplica();
    for (const r of this.replicas) if (r.writable) r.submitWriteZeroes(epoch, offset, length, fua, op);
    return op.promise;
  }

  discard(epoch: number, offset: number, length: number): Promise<void> {
    const op = this.startMutation(false);
    if (op === undefined) return this.noWritableReplica();
    for (const r of this.replicas) if (r.writable) r.submitDiscard(epoch, offset, length, op);
    return op.promise;
  }

  /**
   * Picks the next replica for a read and submits it; false when every
   * readable replica was tried. Prefers replicas whose node is reachable, then
   * the fewest outstanding requests on that node, ties round-robin.
   */
  submitRead(op: ReadOp): boolean {
    const replicas = this.replicas;
    const n = replicas.length;
    const start = this.rr;
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

  /** Called by a MutationOp once every replica answered and some failed. */
  settleFailedMutation(failures: readonly ReplicaFailure[], op: { resolve(): void; reject(err: Error): void }): void {
    const fenced = failures.find((f) => f.error instanceof StaleEpochError);
    if (fenced !== undefined) {
      this.tracker.end();
      op.reject(new StaleEpochError(
        `write to volume ${this.volumeName} refused: this head's lease epoch is stale (${errorMessage(fenced.error)})`,
        { volume: this.volumeName, segment: this.index, slot: fenced.replica.slot, node: fenced.replica.address },
      ));
      return;
    }
    const writable = this.replicas.filter((r) => r.writable).length;
    if (failures.length === writable && failures.every((f) => f.error instanceof InvalidArgumentError)) {
      this.tracker.end();
      op.reject(failures[0]!.error);
      return;
    }
    this.failureHandler.mutationFailed(this, failures, writable - failures.length).then(
      () => {
        this.tracker.end();
        op.resolve();
      },
      (err: unknown) => {
        this.tracker.end();
        op.reject(err instanceof Error ? err : new IoError(String(err)));
      },
    );
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

  private startMutation(fua: boolean): MutationOp | undefined {
    let count = 0;
    for (const r of this.replicas) if (r.writable) count++;
    if (count === 0) return undefined;
    this.tracker.begin();
    return new MutationOp(this, fua, count);
  }

  private noWritableReplica(): Promise<void> {
    return Promise.reject(new IoError(`segment ${this.index} of volume ${this.volumeName} has no writable replica`, {
      volume: this.volumeName, segment: this.index,
    }));
  }
}
