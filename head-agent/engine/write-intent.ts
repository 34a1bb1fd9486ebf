import { IoError, StaleEpochError, errorMessage } from '../../shared/errors.js';
import { ReadOnlyChunkError } from '../../shared/data-protocol/status.js';
import { MiB } from '../../shared/constants.js';
import { moduleLogger, type Logger } from '../../shared/logger.js';
import type { Replica } from './replica.js';

// Write-intent (docs/design.md rule 4): before the first write into a region that is
// not marked dirty, every writable replica of the segment persists a dirty
// bit for it (MARK_DIRTY); the write goes out only once all answered. After
// a crash of this head, the next holder reconciles exactly the dirty regions
// (reconcile.ts) before reads are balanced across the replicas.
//
// The head tracks intent in GROUPS of regions (default 4 MiB): marking is a
// durable metadata write on every node, so a sequential writer pays one MARK
// round trip per group, not per 64 KiB region; a crash reconciles whole groups
// (more copying, never less safety: the node sets the bit of every region the
// range covers). A writer entering a group at its start (a sequential stream)
// marks the next few groups in the same request, so it does not stall at each.
//
// Bits are cleared lazily by sweep(), every ~2 s: a group is cleared only if
// no write was sent into it since the sweep began, every write sent before
// that has completed (tracker barrier), and a flush then completed (so the
// replicas hold the same bytes durably). The checks that decide a write may
// go out without a MARK (covered) and the send are synchronous, as is the
// sweep's decision to clear; a MARK waits for a CLEAR in progress on the
// segment (the node may reorder requests of one connection).

/** Default write-intent granularity. */
export const DEFAULT_INTENT_GROUP_BYTES = 4 * MiB;

/** Groups marked ahead of a sequential writer (see mark()). */
const MARK_AHEAD = 3;

/** What write-intent needs of a mirror (mirror.ts imports this file). */
export interface IntentMirror {
  readonly volumeName: string;
  readonly index: number;
  readonly replicas: readonly Replica[];
}

export interface IntentFailure {
  readonly replica: Replica;
  readonly error: Error;
}

interface MarkBatch {
  mirror: IntentMirror;
  epoch: number;
  groups: number[];
  promise: Promise<IntentFailure[]>;
  resolve: (failures: IntentFailure[]) => void;
  reject: (err: Error) => void;
}

/** Write-intent state of one segment. */
export class SegmentIntent {
  readonly groupSize: number;
  readonly groupCount: number;
  private readonly chunkSize: number;
  /** 1: the group's dirty bits are set on every writable replica. */
  private readonly dirty: Uint8Array;
  /** 1: a write was sent into the group since the current sweep began. */
  private readonly recent: Uint8Array;
  /**
   * 1: dirty on some replicas from before forget() (a replica joined the
   * segment without those marks); cleared by the sweep once quiet.
   */
  private readonly leftover: Uint8Array;
  /** The MARK in progress for a group. */
  private readonly marking: (Promise<IntentFailure[]> | undefined)[];
  /** Groups waiting for this tick's MARK requests. */
  private batch: MarkBatch | undefined;
  /** CLEAR requests in progress (a MARK waits for them). */
  private clearing: Promise<void> | undefined;
  private dirtyGroups = 0;
  /** MARK requests sent (stats, tests). */
  marks = 0;

  constructor(chunkSize: number, groupSize: number) {
    this.chunkSize = chunkSize;
    this.groupSize = Math.max(1, Math.min(groupSize, chunkSize));
    this.groupCount = Math.ceil(chunkSize / this.groupSize);
    this.dirty = new Uint8Array(this.groupCount);
    this.recent = new Uint8Array(this.groupCount);
    this.leftover = new Uint8Array(this.groupCount);
    this.marking = new Array<Promise<IntentFailure[]> | undefined>(this.groupCount);
  }

  get dirtyCount(): number {
    return this.dirtyGroups;
  }

  /** Settles when the CLEAR requests sent so far have been answered. */
  cleared(): Promise<void> {
    return this.clearing ?? Promise.resolve();
  }

  /**
   * Hot path: true when every group of the range is marked dirty, and then
   * notes the range as written (the caller sends the write at once).
   */
  covered(offset: number, length: number): boolean {
    if (length === 0) return true;
    const gs = this.groupSize;
    const first = Math.floor(offset / gs);
    const last = Math.floor((offset + length - 1) / gs);
    const dirty = this.dirty;
    for (let g = first; g <= last; g++) if (dirty[g] === 0) return false;
    for (let g = first; g <= last; g++) this.recent[g] = 1;
    return true;
  }

  /**
   * Marks the groups of the range dirty on every writable replica of
   * `mirror` (joining MARKs already under way). Resolves with the replicas
   * where it failed (they must not take the write; the caller reports them);
   * rejects with StaleEpochError when fenced, IoError when it failed everywhere.
   */
  async mark(mirror: IntentMirror, epoch: number, offset: number, length: number): Promise<IntentFailure[]> {
    const first = Math.floor(offset / this.groupSize);
    const last = Math.min(Math.floor((offset + Math.max(length, 1) - 1) / this.groupSize), this.groupCount - 1);
    const waits: Promise<IntentFailure[]>[] = [];
    for (let g = first; g <= last; g++) {
      if (this.dirty[g] !== 0) continue;
      let p = this.marking[g];
      if (p === undefined) {
        const batch = this.openBatch(mirror, epoch);
        batch.groups.push(g);
        p = batch.promise;
        this.marking[g] = p;
      }
      if (!waits.includes(p)) waits.push(p);
    }
    if (waits.length === 0) return [];
    // A write entering a group at its start looks like a sequential stream: mark the next few
    // groups in the same requests (no extra round trip), so the stream does not stall at each.
    if (offset - first * this.groupSize < length) {
      const batch = this.batch;
      for (let g = last + 1; g <= last + MARK_AHEAD && g < this.groupCount && batch !== undefined; g++) {
        if (this.dirty[g] !== 0 || this.marking[g] !== undefined || batch.epoch !== epoch || batch.mirror !== mirror) continue;
        batch.groups.push(g);
        this.marking[g] = batch.promise;
      }
    }
    const results = await Promise.all(waits);
    if (results.length === 1) return results[0]!;
    const out: IntentFailure[] = [];
    for (const list of results) for (const f of list) if (!out.some((o) => o.replica === f.replica)) out.push(f);
    return out;
  }

  /** One batch per tick: the groups of every write of the tick go out together. */
  private openBatch(mirror: IntentMirror, epoch: number): MarkBatch {
    const open = this.batch;
    // (A re-attach with a newer epoch gives new mirrors: their marks go in a batch of their own.)
    if (open !== undefined && open.epoch === epoch && open.mirror === mirror) return open;
    let resolve!: (f: IntentFailure[]) => void;
    let reject!: (e: Error) => void;
    const promise = new Promise<IntentFailure[]>((res, rej) => { resolve = res; reject = rej; });
    const batch: MarkBatch = { mirror, epoch, groups: [], promise, resolve, reject };
    this.batch = batch;
    process.nextTick(() => {
      if (this.batch === batch) this.batch = undefined;
      void this.sendMarks(batch);
    });
    return batch;
  }

  private async sendMarks(batch: MarkBatch): Promise<void> {
    try {
      while (this.clearing !== undefined) await this.clearing;
      const replicas = batch.mirror.replicas.filter((r) => r.writable);
      if (replicas.length === 0) {
        throw new IoError(`segment ${batch.mirror.index} of volume ${batch.mirror.volumeName} has no writable replica`, {
          volume: batch.mirror.volumeName, segment: batch.mirror.index,
        });
      }
      const runs = this.runs(batch.groups);
      this.marks += runs.length * replicas.length;
      const results = await Promise.allSettled(replicas.map((r) => Promise.all(runs.map(([off, len]) => r.markDirty(batch.epoch, off, len)))));
      const failures: IntentFailure[] = [];
      results.forEach((res, i) => {
        if (res.status === 'rejected') failures.push({ replica: replicas[i]!, error: res.reason instanceof Error ? res.reason : new IoError(String(res.reason)) });
      });
      const fenced = failures.find((f) => f.error instanceof StaleEpochError);
      if (fenced !== undefined) throw fenced.error;
      // A snapshot's chunk refused the mark (READ_ONLY): a rule, not a failed replica to report.
      const readOnly = failures.find((f) => f.error instanceof ReadOnlyChunkError);
      if (readOnly !== undefined) throw readOnly.error;
      if (failures.length === replicas.length) {
        const parts = failures.map((f) => `${f.replica.describe()}: ${errorMessage(f.error)}`);
        throw new IoError(`write-intent mark of segment ${batch.mirror.index} of volume ${batch.mirror.volumeName} failed on every replica: ${parts.join('; ')}`, {
          volume: batch.mirror.volumeName, segment: batch.mirror.index,
        }, { cause: failures[0]!.error });
      }
      for (const g of batch.groups) {
        if (this.dirty[g] === 0) this.dirtyGroups++;
        this.dirty[g] = 1;
        this.leftover[g] = 0;
        // Counts as written: a sweep already under way must not clear it before the write goes out.
        this.recent[g] = 1;
        this.marking[g] = undefined;
      }
      batch.resolve(failures);
    } catch (err) {
      for (const g of batch.groups) this.marking[g] = undefined;
      batch.reject(err instanceof Error ? err : new IoError(String(err)));
    }
  }

  /** Contiguous runs of groups as [offset, length] within the chunk. */
  private runs(groups: number[]): [number, number][] {
    const sorted = [...groups].sort((a, b) => a - b);
    const out: [number, number][] = [];
    let i = 0;
    while (i < sorted.length) {
      let j = i;
      while (j + 1 < sorted.length && sorted[j + 1] === sorted[j]! + 1) j++;
      const off = sorted[i]! * this.groupSize;
      const end = Math.min((sorted[j]! + 1) * this.groupSize, this.chunkSize);
      out.push([off, end - off]);
      i = j + 1;
    }
    return out;
  }

  /**
   * A replica joined the writable set (a map update): it has none of the
   * marks. Every group is taken as clean, so the next write into it marks it
   * on every writable replica, the new one included; the old marks are
   * cleared by the sweep (leftover).
   */
  forget(): void {
    for (let g = 0; g < this.groupCount; g++) {
      if (this.dirty[g] === 0) continue;
      this.dirty[g] = 0;
      this.leftover[g] = 1;
    }
    this.dirtyGroups = 0;
  }

  /** Groups dirty or left over (the sweep has work). */
  get sweepable(): boolean {
    if (this.dirtyGroups > 0) return true;
    for (let g = 0; g < this.groupCount; g++) if (this.leftover[g] !== 0) return true;
    return false;
  }

  /** Sweep, step 1: start watching for writes. */
  startWatch(): void {
    this.recent.fill(0);
  }

  /**
   * Sweep, step 2 (synchronous, after the barrier and the flush): drops the
   * dirty groups with no write since startWatch() and no MARK under way, and
   * sends CLEAR_DIRTY for them (best effort). Returns how many were dropped.
   */
  clearQuiet(mirror: IntentMirror, epoch: number, log: Logger): number {
    const groups: number[] = [];
    for (let g = 0; g < this.groupCount; g++) {
      if (this.recent[g] !== 0 || this.marking[g] !== undefined) continue;
      if (this.dirty[g] !== 0) {
        this.dirty[g] = 0;
        this.dirtyGroups--;
        this.leftover[g] = 0;
        groups.push(g);
      } else if (this.leftover[g] !== 0) {
        this.leftover[g] = 0;
        groups.push(g);
      }
    }
    if (groups.length > 0) this.sendClears(mirror, epoch, groups, log);
    return groups.length;
  }

  /** Detach after the final flush (nothing in flight): clears every dirty group. */
  clearAll(mirror: IntentMirror, epoch: number, log: Logger): Promise<void> {
    const groups: number[] = [];
    for (let g = 0; g < this.groupCount; g++) {
      if (this.dirty[g] !== 0 || this.leftover[g] !== 0) {
        this.dirty[g] = 0;
        this.leftover[g] = 0;
        groups.push(g);
      }
    }
    this.dirtyGroups = 0;
    if (groups.length > 0) this.sendClears(mirror, epoch, groups, log);
    return this.cleared();
  }

  private sendClears(mirror: IntentMirror, epoch: number, groups: number[], log: Logger): void {
    const runs = this.runs(groups);
    const replicas = mirror.replicas.filter((r) => r.writable);
    const previous = this.clearing;
    const done: Promise<void> = (async () => {
      if (previous !== undefined) await previous;
      const results = await Promise.allSettled(replicas.flatMap((r) => runs.map(([off, len]) => r.clearDirty(epoch, off, len))));
      const failed = results.filter((r) => r.status === 'rejected');
      if (failed.length > 0) {
        // Harmless: the bits stay set on that node, and the next holder reconciles those regions.
        log.debug({ volume: mirror.volumeName, segment: mirror.index, failed: failed.length, err: errorMessage((failed[0] as PromiseRejectedResult).reason) },
          'write-intent clear failed (best effort)');
      }
    })().finally(() => {
      if (this.clearing === done) this.clearing = undefined;
    });
    this.clearing = done;
  }
}

/** Write-intent state of a volume: one SegmentIntent per segment, and the sweep. */
export class WriteIntent {
  readonly segments: SegmentIntent[];
  private sweeping = false;
  private readonly log: Logger;

  constructor(volumeName: string, private readonly chunkSize: number, segmentCount: number, private readonly groupBytes = DEFAULT_INTENT_GROUP_BYTES) {
    this.segments = [];
    this.grow(segmentCount);
    this.log = moduleLogger('head-write-intent', { volume: volumeName });
  }

  /** The volume grew (online resize): new segments start with no dirty groups (nothing was written there). */
  grow(segmentCount: number): void {
    while (this.segments.length < segmentCount) this.segments.push(new SegmentIntent(this.chunkSize, this.groupBytes));
  }

  get dirtyCount(): number {
    let n = 0;
    for (const s of this.segments) n += s.dirtyCount;
    return n;
  }

  /**
   * Clears the groups that went quiet: watch for new writes, wait for the
   * writes already sent (`barrier`), flush (`flush`), then clear what was not
   * written meanwhile. Resolves with the number of groups cleared (0 when a
   * sweep is already running or the flush failed).
   */
  async sweep(mirrors: () => readonly IntentMirror[], epoch: () => number, barrier: () => Promise<void>, flush: () => Promise<void>): Promise<number> {
    if (this.sweeping) return 0;
    const watched = this.segments.filter((s) => s.sweepable);
    if (watched.length === 0) return 0;
    this.sweeping = true;
    try {
      for (const s of watched) s.startWatch();
      await barrier();
      try {
        await flush();
      } catch (err) {
        this.log.debug({ err: errorMessage(err) }, 'write-intent sweep: flush failed; clearing later');
        return 0;
      }
      const current = mirrors();
      const e = epoch();
      let cleared = 0;
      for (const s of watched) {
        const i = this.segments.indexOf(s);
        cleared += s.clearQuiet(current[i]!, e, this.log);
      }
      await Promise.all(watched.map((s) => s.cleared()));
      return cleared;
    } finally {
      this.sweeping = false;
    }
  }

  /** After a clean detach's final flush. */
  async clearAll(mirrors: readonly IntentMirror[], epoch: number): Promise<void> {
    await Promise.all(this.segments.map((s, i) => s.clearAll(mirrors[i]!, epoch, this.log)));
  }
}
