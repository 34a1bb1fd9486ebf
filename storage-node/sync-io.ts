import fs from 'node:fs';

// Whether a disk's data writes (write-gather.ts), small reads (disk.ts) and
// chunk record writes (disk/record-writer.ts, its own limits and instance)
// are issued synchronously on the event loop or through libuv's thread pool. A write into the page
// cache takes a few microseconds, less than the pool hop around it (a
// queue, a futex wake, two thread switches, a completion callback: measured,
// half of a node's CPU per 4 KiB write), so the default is synchronous.
//
// Only small runs (up to SYNC_MAX_RUN) are written on the loop: for them the
// hop costs more than the copy. What can make a page-cache write block, and
// the rule for each:
// - the kernel throttling a writer once too many pages are dirty
//   (balance_dirty_pages: pauses of up to 200 ms each), e.g. a disk whose
//   writeback slowed down or hung: a synchronous run slower than
//   SLOW_WRITE_MS (or one that failed) sends the disk to the pool, and it
//   comes back only once POOL_SPELL_MS have passed AND no pool write is
//   outstanding AND the last one took under SLOW_WRITE_MS. A disk whose
//   writeback hangs therefore stays on the pool (its pool writes never
//   complete) after at most one throttled synchronous write;
// - a write that covers part of a page not in the cache (the kernel reads
//   the page first, from the disk): only runs whose position and length are
//   multiples of SYNC_ALIGN are written synchronously.
// What this does not cover: a disk that hangs abruptly under a synchronous
// write that needs the device (a filesystem journal commit, block
// allocation of a sparse file on a full journal) holds the node's event loop
// until the device returns; the heads then fail the node after their data
// timeout and the manager may declare the whole node dead, not only that
// disk (docs/benchmarks.md, issue 12 fourth pass). VSKY_DISK_IO=pool keeps
// every write and read on the pool (the behaviour before), as an escape hatch
// and for A/B measurements.
//
// Reads (READ_LIMITS): a read served from the page cache costs a few
// microseconds of copying, the pool hop around it tens (and at queue depth 1
// a thread hand-off more on the request's path). A read that misses the
// cache goes to the device, and there is no way to tell beforehand from
// Node, so the rules are stricter than for writes:
// - not while the disk's pool reads are stuck: pool reads outstanding and
//   none completed for SLOW_READ_MS (a device read on a slow, busy or hung
//   disk); reads then keep their parallelism on the pool instead of
//   queueing on the loop. A pool read that is merely outstanding (a 64 KiB
//   read, a page-cache read in progress) does not send the small reads
//   there: under a steady stream it would keep the disk on the pool for as
//   long as the stream lasts (docs/benchmarks.md, issue 12 fifth and sixth
//   passes);
// - a synchronous read slower than SLOW_READ_MS (a cache miss on any device
//   but a fast SSD, or a loaded machine) or one that failed sends the disk's
//   reads to the pool, with the same way back as writes;
// - up to SYNC_MAX_READ bytes.
// A device that hangs under the first cache miss holds the loop, as for
// writes above. VSKY_DISK_READ=pool keeps only the reads on the pool.

/** A synchronous write run slower than this sends the disk's writes to the pool. */
export const SLOW_WRITE_MS = 2;
/** Least time a disk stays on the pool after a slow or failed synchronous write. */
export const POOL_SPELL_MS = 1000;
/** Only runs aligned to this (position and length) are written synchronously. */
export const SYNC_ALIGN = 4096;
/**
 * Larger runs go to the pool: there the hop is small next to the copy, and
 * the event loop reads and dispatches the next requests while a pool thread
 * copies (64 KiB overwrites at QD16 ran at a median of 184 MiB/s written on
 * the loop against 222 MiB/s on the pool, alternated 3x).
 */
export const SYNC_MAX_RUN = 32 * 1024;

/** A synchronous read slower than this sends the disk's reads to the pool. */
export const SLOW_READ_MS = 0.5;
/** Larger reads go to the pool. */
export const SYNC_MAX_READ = 32 * 1024;

export type SyncIoName = 'sync' | 'pool';

export function defaultSyncIo(): SyncIoName {
  return process.env.VSKY_DISK_IO === 'pool' ? 'pool' : 'sync';
}

export function defaultSyncRead(): SyncIoName {
  return process.env.VSKY_DISK_IO === 'pool' || process.env.VSKY_DISK_READ === 'pool' ? 'pool' : 'sync';
}

/** Which runs may go on the loop. */
export interface SyncLimits {
  /** Largest run. */
  maxRun: number;
  /** Position and length must be multiples of this. */
  align: number;
  /** Not while pool I/O of this kind is stuck (outstanding, none completed for slowMs). */
  unlessPoolStuck: boolean;
}

export const WRITE_LIMITS: SyncLimits = { maxRun: SYNC_MAX_RUN, align: SYNC_ALIGN, unlessPoolStuck: false };
export const READ_LIMITS: SyncLimits = { maxRun: SYNC_MAX_READ, align: 1, unlessPoolStuck: true };

/** The read side of a disk: synchronous small reads while they stay fast (see above). */
export function readSyncIo(name: SyncIoName = defaultSyncRead()): SyncIo {
  return new SyncIo(name, SLOW_READ_MS, POOL_SPELL_MS, READ_LIMITS);
}

export class SyncIo {
  private readonly allowSync: boolean;
  private readonly slowMs: number;
  private readonly spellMs: number;
  private readonly limits: SyncLimits;
  /** performance.now() until which writes go through the pool (0: not on the pool). */
  private poolUntil = 0;
  /** Pool writes started and not completed. */
  private poolInflight = 0;
  /** The last completed pool write took under slowMs. */
  private poolFast = false;
  /** performance.now() of the last pool completion, or of the start that made the pool busy. */
  private poolProgressAt = 0;
  /** Synchronous runs, and those that sent the disk to the pool (stats, tests). */
  syncRuns = 0;
  slowRuns = 0;

  constructor(name: SyncIoName = defaultSyncIo(), slowMs = SLOW_WRITE_MS, spellMs = POOL_SPELL_MS, limits = WRITE_LIMITS) {
    this.allowSync = name === 'sync';
    this.slowMs = slowMs;
    this.spellMs = spellMs;
    this.limits = limits;
  }

  /** Whether a run of `length` bytes at `position` is done on the event loop. */
  sync(position: number, length: number): boolean {
    const l = this.limits;
    if (!this.allowSync || length > l.maxRun || position % l.align !== 0 || length % l.align !== 0) return false;
    if (l.unlessPoolStuck && this.poolInflight > 0 && performance.now() - this.poolProgressAt > this.slowMs) return false;
    if (this.poolUntil === 0) return true;
    if (performance.now() < this.poolUntil || this.poolInflight > 0 || !this.poolFast) return false;
    this.poolUntil = 0;
    return true;
  }

  /**
   * Reads on the event loop, going on after a short read, and observes the
   * time taken; returns the OS error, if any (EIO for the end of the disk).
   */
  readSync(fd: number, buf: Buffer, bufOffset: number, length: number, position: number): NodeJS.ErrnoException | null {
    const started = performance.now();
    let err: NodeJS.ErrnoException | null = null;
    try {
      for (let done = 0; done < length;) {
        const n = fs.readSync(fd, buf, bufOffset + done, length - done, position + done);
        if (n === 0) throw Object.assign(new Error('unexpected end of disk'), { code: 'EIO' });
        done += n;
      }
    } catch (e) {
      err = e as NodeJS.ErrnoException;
    }
    this.observe(performance.now() - started, err !== null);
    return err;
  }

  /** A synchronous run took `ms` (and failed or not). */
  observe(ms: number, failed: boolean): void {
    this.syncRuns++;
    if (ms > this.slowMs || failed) {
      this.slowRuns++;
      this.poolUntil = performance.now() + this.spellMs;
      this.poolFast = false;
    }
  }

  /** A pool write starts; call the returned time with poolDone. */
  poolStart(): number {
    const now = performance.now();
    if (this.poolInflight++ === 0) this.poolProgressAt = now;
    return now;
  }

  /** A pool write started at `started` completed (failed or not). */
  poolDone(started: number, failed: boolean): void {
    this.poolInflight--;
    const now = performance.now();
    this.poolProgressAt = now;
    this.poolFast = !failed && now - started < this.slowMs;
  }
}
