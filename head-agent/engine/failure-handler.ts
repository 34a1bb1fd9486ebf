import { IoError, errorMessage } from '../../shared/errors.js';
import type { Replica } from './replica.js';

// The seam that decides what a mutation that failed on some replicas becomes
// (mirror.ts calls it), and its default: the mutation fails. The reporting
// handler (replica-failures.ts) implements the degraded path.

/** What a handler sees of a mirror (a structural view: no import cycle with mirror.ts). */
export interface FailingMirror {
  readonly volumeName: string;
  readonly index: number;
  /** The volume's lease epoch: what failure reports carry. */
  readonly epoch: number;
  readonly replicas: readonly Replica[];
}

export interface ReplicaFailure {
  readonly replica: Replica;
  readonly error: Error;
}

/**
 * Decides what a mutation that failed on some replicas becomes. This is the
 * seam for degraded writes: the reporting handler (replica-failures.ts) marks
 * the failed replicas stale durably (through the manager) and then resolves,
 * so the write is acknowledged on the survivors (docs/design.md rule 2: stale-marking
 * comes BEFORE the acknowledgement). The default rejects. Never consulted for
 * StaleEpochError (this head was fenced off: nothing may be acknowledged).
 */
export interface ReplicaFailureHandler {
  /** `succeeded`: replicas that acknowledged the mutation. Resolve = acknowledge it. */
  mutationFailed(mirror: FailingMirror, failures: readonly ReplicaFailure[], succeeded: number): Promise<void>;
  /**
   * A mutation succeeded on every replica it was sent to but skipped suspect
   * replicas (Replica.suspect) of the mirror: resolve once they are durably
   * recorded as out of sync, reject to fail the mutation.
   */
  suspectsSkipped?(mirror: FailingMirror): Promise<void>;
  /** A read failed on these replicas and then succeeded on another. */
  readFailed?(mirror: FailingMirror, failures: readonly ReplicaFailure[]): void;
  /** A map update changed the mirror's replicas or their states. */
  mapApplied?(mirror: FailingMirror): void;
  /**
   * Attach could not fence the replica's node: true when the handler takes it
   * as failed (suspect, to be recorded stale) so the attach may go on.
   */
  replicaUnreachable?(mirror: FailingMirror, replica: Replica, error: Error): boolean;
}

/** The default of this issue: any replica failure fails the write. */
export const rejectOnReplicaFailure: ReplicaFailureHandler = {
  mutationFailed(mirror, failures) {
    return Promise.reject(mutationFailureError(mirror, failures));
  },
};

/** IoError naming every replica that failed (the first error is the cause). */
export function mutationFailureError(mirror: FailingMirror, failures: readonly ReplicaFailure[]): IoError {
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
