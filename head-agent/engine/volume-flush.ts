import { IoError, StaleEpochError, errorMessage } from '../../shared/errors.js';
import type { Mirror } from './mirror.js';
import type { MutationTracker } from './mutation-tracker.js';
import type { Replica } from './replica.js';
import type { LeaseState } from './volume-lease.js';
import type { WriteIntent } from './write-intent.js';

// A volume's FLUSH (owned by its LinearVolume): one FLUSH per storage node
// holding replicas of the volume, not one per replica. The node syncs every
// disk holding a chunk of the volume. A write that completes without FUA
// marks its node's group dirty (Replica.noteWritten); a flush sends FLUSH to
// the dirty groups and waits for the ones a concurrent flush already took.
// A node that fails the flush is handled like replicas that failed a write.
// The flushes a volume's lifecycle needs come here too: the detach's (the
// mutations in flight settle first) and the write-intent sweep's.

/** What the flush needs of its volume. */
export interface FlushOwner {
  readonly name: string;
  /** The current mirrors. */
  mirrors(): readonly Mirror[];
  /** A node refused our epoch: the volume is fenced. */
  fence(err: Error): void;
  readonly epoch: number;
  readonly lease: LeaseState;
  readonly isDetached: boolean;
  readonly tracker: MutationTracker;
  /** Undefined when write-intent is off. */
  readonly intent: WriteIntent | undefined;
  detachedError(): IoError;
}

/**
 * One storage node holding replicas of a volume: `dirty` is set when a non-FUA
 * write to any of them completes and cleared by the volume's flush, which
 * sends one FLUSH (the node syncs every disk holding a chunk of the volume)
 * addressed through one of its writable `members`.
 */
export class FlushGroup {
  dirty = true;
  readonly members: Replica[] = [];
  /** The FLUSH in flight: a flush finding the group clean still waits for it (it may carry our writes). */
  inflight: Promise<void> | undefined;

  /** The replica to address the FLUSH through: a writable one (states change), if any. */
  get replica(): Replica | undefined {
    for (const r of this.members) if (r.writable) return r;
    return undefined;
  }
}

export class VolumeFlush {
  private groups: FlushGroup[] = [];

  constructor(private readonly owner: FlushOwner) {
    this.rebuild();
  }

  /** The replica set changed (a map update, a re-attach): groups follow it. */
  rebuild(): void {
    this.groups = buildFlushGroups(this.owner.mirrors());
  }

  /**
   * A detach (LinearVolume.close): the mutations in flight settle, then every
   * node is flushed; throws if that flush fails (the caller reopens the
   * volume). Then no region needs reconciling: the write-intent bits are
   * cleared (best effort: a bit left set only costs a copy).
   */
  async drain(): Promise<void> {
    const v = this.owner;
    await v.tracker.idle();
    await this.flush(v.epoch);
    await v.intent?.clearAll(v.mirrors(), v.epoch).catch(() => undefined);
  }

  /**
   * The write-intent sweep (the attachments call it every ~2 s): clears the
   * dirty groups that saw no write since the last completed flush. Resolves
   * with the number cleared. Only the holder clears bits: a standby's epoch
   * may still be current, and its clears would erase the holder's marks.
   */
  sweepIntent(): Promise<number> {
    const v = this.owner;
    const intent = v.intent;
    if (intent === undefined || v.isDetached || v.lease !== 'held') return Promise.resolve(0);
    return intent.sweep(() => v.mirrors(), () => v.epoch, () => v.tracker.barrier(), () => {
      if (v.isDetached) return Promise.reject(v.detachedError());
      return this.flush(v.epoch);
    });
  }

  /** FLUSH to every dirty group (and wait for the FLUSHes in flight) under `epoch`. */
  async flush(epoch: number): Promise<void> {
    const groups: FlushGroup[] = [];
    const pending: Promise<void>[] = [];
    for (const g of this.groups) {
      const via = g.replica;
      if (via === undefined) continue;
      if (g.dirty) {
        g.dirty = false;
        const p = via.flush(epoch);
        g.inflight = p;
        const done = (): void => { if (g.inflight === p) g.inflight = undefined; };
        p.then(done, done);
        groups.push(g);
        pending.push(p);
      } else if (g.inflight !== undefined) {
        // Clean because a concurrent flush (another client's, or the write-intent sweep's)
        // took it: that FLUSH covers our writes only once it completes.
        groups.push(g);
        pending.push(g.inflight);
      }
    }
    if (pending.length === 0) return;
    const results = await Promise.allSettled(pending);
    const failures: { group: FlushGroup; error: unknown }[] = [];
    results.forEach((r, i) => {
      if (r.status === 'rejected') failures.push({ group: groups[i]!, error: r.reason });
    });
    if (failures.length === 0) return;
    for (const f of failures) f.group.dirty = true;
    const fenced = failures.find((f) => f.error instanceof StaleEpochError);
    if (fenced !== undefined) {
      this.owner.fence(fenced.error as Error);
      throw fenced.error;
    }
    if (await this.degrade(failures)) return;
    const parts = failures.map((f) => `node ${f.group.members[0]!.address}: ${errorMessage(f.error)}`);
    throw new IoError(`flush of volume ${this.owner.name} failed on ${failures.length} node(s): ${parts.join('; ')}`, {
      volume: this.owner.name, nodes: failures.map((f) => f.group.members[0]!.address),
    }, { cause: failures[0]!.error });
  }

  /**
   * A node failed the flush: writes acknowledged since the last flush may be
   * lost there, so its replicas are handled like replicas that failed a write
   * (each mirror's failure handler: recorded stale through the manager before
   * the flush is acknowledged). True when every one was; false fails the flush.
   */
  private async degrade(failures: readonly { group: FlushGroup; error: unknown }[]): Promise<boolean> {
    const failedNodes = new Set(failures.map((f) => f.group.members[0]!.address));
    const decisions: Promise<void>[] = [];
    for (const f of failures) {
      const error = f.error instanceof Error ? f.error : new IoError(String(f.error));
      for (const r of f.group.members) {
        const m = this.owner.mirrors()[r.segment];
        if (!r.writable || m === undefined || !m.replicas.includes(r)) continue;
        const survivors = m.replicas.filter((x) => x.writable && !failedNodes.has(x.address)).length;
        decisions.push(m.failureHandler.mutationFailed(m, [{ replica: r, error }], survivors));
      }
    }
    const results = await Promise.allSettled(decisions);
    return results.every((r) => r.status === 'fulfilled');
  }
}

function buildFlushGroups(segments: readonly Mirror[]): FlushGroup[] {
  const byNode = new Map<string, FlushGroup>();
  const groups: FlushGroup[] = [];
  for (const m of segments) {
    for (const r of m.replicas) {
      let g = byNode.get(r.address);
      if (g === undefined) {
        g = new FlushGroup();
        byNode.set(r.address, g);
        groups.push(g);
      }
      g.members.push(r);
      r.flushGroup = g;
    }
  }
  return groups;
}
