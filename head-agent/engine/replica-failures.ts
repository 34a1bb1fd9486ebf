import { IoError, StaleEpochError, TimeoutError, TransportError, errorMessage } from '../../shared/errors.js';
import { call, type ManagerClient } from '../../shared/grpc.js';
import { moduleLogger, type Logger } from '../../shared/logger.js';
import { mutationFailureError, type FailingMirror, type ReplicaFailure, type ReplicaFailureHandler } from './failure-handler.js';
import type { Replica } from './replica.js';

// Degraded writes (docs/design.md rule 2). A replica that fails a request (I/O error,
// transport error, timeout) while another replica of its segment succeeds
// becomes SUSPECT at once: no more reads or writes go to it. The head reports
// it (ReportReplicaFailure) and acknowledges the writes it missed only once
// the manager answered that the replica is recorded stale; then it is marked
// stale here. Writes that skip a suspect replica wait on the same report (one
// per replica). While the manager cannot be reached those writes wait, at
// most staleReportTimeoutMs, and then fail with IoError: a write is never
// acknowledged while a replica that missed it could still be read as in sync.
// A manager refusing the report because our lease is gone (StaleEpochError)
// fails them at once. Reads go on from the other in-sync replicas meanwhile.

export interface ReportingFailureHandlerOptions {
  headId: string;
  /** The manager, when this head has one (the manager link's client). */
  manager: () => ManagerClient | undefined;
  /** How long a write waits for the manager to record a failed replica stale (default 10000). */
  staleReportTimeoutMs?: number;
  retryInitialMs?: number;
  retryMaxMs?: number;
  /** Deadline of one ReportReplicaFailure call. */
  callTimeoutMs?: number;
}

export const DEFAULT_STALE_REPORT_TIMEOUT_MS = 10_000;

/** One ReportReplicaFailure, retried until the manager answers or the deadline passes. */
class StaleReport {
  readonly mirror: FailingMirror;
  readonly replica: Replica;
  readonly reason: string;
  readonly epoch: number;
  /** Pushed forward by every waiter that joins (each waits at most the bound). */
  deadline = 0;
  settled = false;
  readonly promise: Promise<void>;
  resolve!: () => void;
  reject!: (err: Error) => void;

  constructor(mirror: FailingMirror, replica: Replica, reason: string) {
    this.mirror = mirror;
    this.replica = replica;
    this.reason = reason;
    this.epoch = mirror.epoch;
    this.promise = new Promise<void>((resolve, reject) => {
      this.resolve = resolve;
      this.reject = reject;
    });
    this.promise.catch(() => undefined); // a report nobody waits for (after a read) must not go unhandled
  }
}

/** Failures worth reporting: the replica (or the path to it) is broken; anything else fails the request. */
function reportable(err: Error): boolean {
  return err instanceof IoError || err instanceof TransportError || err instanceof TimeoutError;
}

export class ReportingFailureHandler implements ReplicaFailureHandler {
  private readonly opts: ReportingFailureHandlerOptions;
  private readonly bound: number;
  private readonly reports = new Map<Replica, StaleReport>();
  /** Why each suspect replica is suspect (the report's reason). */
  private readonly reasons = new WeakMap<Replica, string>();
  private readonly log: Logger;
  /** Reports answered OK (stats, tests). */
  confirmed = 0;

  constructor(opts: ReportingFailureHandlerOptions) {
    this.opts = opts;
    this.bound = opts.staleReportTimeoutMs ?? DEFAULT_STALE_REPORT_TIMEOUT_MS;
    this.log = moduleLogger('head-replica-failures');
  }

  mutationFailed(mirror: FailingMirror, failures: readonly ReplicaFailure[], succeeded: number): Promise<void> {
    if (succeeded === 0 || !failures.every((f) => reportable(f.error)) || this.opts.manager() === undefined) {
      return Promise.reject(mutationFailureError(mirror, failures));
    }
    for (const f of failures) this.suspect(mirror, f.replica, f.error);
    return this.confirm(mirror);
  }

  suspectsSkipped(mirror: FailingMirror): Promise<void> {
    return this.confirm(mirror);
  }

  readFailed(mirror: FailingMirror, failures: readonly ReplicaFailure[]): void {
    if (this.opts.manager() === undefined) return;
    for (const f of failures) {
      if (!reportable(f.error) || !this.suspect(mirror, f.replica, f.error)) continue;
      this.join(this.reportFor(mirror, f.replica));
    }
  }

  replicaUnreachable(mirror: FailingMirror, replica: Replica, error: Error): boolean {
    if (this.opts.manager() === undefined) return false;
    if (this.suspect(mirror, replica, error)) this.join(this.reportFor(mirror, replica));
    return true;
  }

  /**
   * The attachments applied a map to `mirror`: a suspect replica the map made
   * stale or resyncing (so the manager has it out of sync), or removed, no
   * longer needs its report.
   */
  mapApplied(mirror: FailingMirror): void {
    for (const [replica, rep] of this.reports) {
      if (replica.volumeName !== mirror.volumeName || replica.segment !== mirror.index) continue;
      if (!replica.suspect || !mirror.replicas.includes(replica)) this.finish(rep, undefined);
    }
  }

  /** Replicas with a report under way (tests). */
  get pending(): number {
    return this.reports.size;
  }

  /** Makes `replica` suspect (unless already out of sync or gone); false when there is nothing to report. */
  private suspect(mirror: FailingMirror, replica: Replica, error: Error): boolean {
    if (replica.state === 'stale' || !mirror.replicas.includes(replica)) return false;
    if (!replica.suspect) {
      replica.suspect = true;
      this.reasons.set(replica, errorMessage(error));
      this.log.warn({ volume: mirror.volumeName, segment: mirror.index, slot: replica.slot, node: replica.address, err: errorMessage(error) },
        'replica failed: no longer used; reporting it to the manager');
    }
    return true;
  }

  /** Resolves once every suspect replica of the mirror is recorded stale. */
  private confirm(mirror: FailingMirror): Promise<void> {
    let waits: Promise<void>[] | undefined;
    for (const r of mirror.replicas) {
      if (r.suspect) (waits ??= []).push(this.join(this.reportFor(mirror, r)));
    }
    if (waits === undefined) return Promise.resolve();
    return waits.length === 1 ? waits[0]! : Promise.all(waits).then(() => undefined);
  }

  private join(rep: StaleReport): Promise<void> {
    rep.deadline = Math.max(rep.deadline, Date.now() + this.bound);
    return rep.promise;
  }

  private reportFor(mirror: FailingMirror, replica: Replica): StaleReport {
    let rep = this.reports.get(replica);
    if (rep === undefined) {
      rep = new StaleReport(mirror, replica, this.reasons.get(replica) ?? 'replica failed');
      rep.deadline = Date.now() + this.bound;
      this.reports.set(replica, rep);
      void this.run(rep);
    }
    return rep;
  }

  private async run(rep: StaleReport): Promise<void> {
    const { replica } = rep;
    let delay = this.opts.retryInitialMs ?? 100;
    let lastErr: unknown;
    while (!rep.settled) {
      const client = this.opts.manager();
      const remaining = rep.deadline - Date.now();
      if (client !== undefined && remaining > 0) {
        try {
          // The reply carries the new map; it is not applied here: the manager pushes
          // every change with UpdateMap, in order (the reply could overtake a newer push).
          await call(client, 'ReportReplicaFailure', {
            headId: this.opts.headId, volume: replica.volumeName, segment: replica.segment, slot: replica.slot,
            epoch: rep.epoch, reason: rep.reason,
          }, Math.max(1, Math.min(this.opts.callTimeoutMs ?? 3000, remaining)));
          if (rep.settled) return;
          replica.markStale();
          this.confirmed++;
          this.log.warn({ volume: replica.volumeName, segment: replica.segment, slot: replica.slot }, 'the manager recorded the replica stale');
          this.finish(rep, undefined);
          return;
        } catch (err) {
          if (rep.settled) return;
          if (!(err instanceof TransportError || err instanceof TimeoutError)) {
            // A definite answer: our lease is gone (StaleEpochError), or the manager will not take it.
            this.finish(rep, err instanceof StaleEpochError ? err : new IoError(
              `the manager refused to record ${replica.describe()} stale (${errorMessage(err)}): the write is not acknowledged`,
              { volume: replica.volumeName, segment: replica.segment, slot: replica.slot }, { cause: err },
            ));
            return;
          }
          lastErr = err;
        }
      }
      const left = rep.deadline - Date.now();
      if (left <= 0) {
        this.finish(rep, new IoError(
          `could not record failed ${replica.describe()} as stale with the manager within ${this.bound} ms`
          + ` (${client === undefined ? 'no manager' : errorMessage(lastErr)}): the write is not acknowledged`,
          { volume: replica.volumeName, segment: replica.segment, slot: replica.slot }, { cause: lastErr },
        ));
        return;
      }
      await new Promise((resolve) => setTimeout(resolve, Math.min(delay, left)).unref());
      delay = Math.min(delay * 2, this.opts.retryMaxMs ?? 2000);
    }
  }

  /**
   * Ends a report: resolved (recorded stale, or the map says so) or failed
   * (the replica stays suspect: unused; the next write that needs it reports
   * again).
   */
  private finish(rep: StaleReport, err: Error | undefined): void {
    if (rep.settled) return;
    rep.settled = true;
    if (this.reports.get(rep.replica) === rep) this.reports.delete(rep.replica);
    if (err === undefined) {
      rep.resolve();
    } else {
      this.log.warn({ volume: rep.replica.volumeName, segment: rep.replica.segment, slot: rep.replica.slot, err: err.message },
        'failed replica not recorded stale: writes to its segment fail until the manager answers');
      rep.reject(err);
    }
  }
}
