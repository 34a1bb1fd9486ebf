// How a disk's data writes are issued (write-gather.ts): synchronously on the
// event loop, or through libuv's thread pool. Page-cache writes take a few
// microseconds, less than the pool hop around them (a queue, a futex wake,
// two thread switches, a completion callback), so the default is
// synchronous. But a write into the page cache can block: the kernel
// throttles a writer once too many pages are dirty (balance_dirty_pages),
// and a failing disk may hang. Blocking the event loop would stall every
// connection of the node (PINGs unanswered: heads would fail the node), so
// a synchronous write slower than SLOW_WRITE_MS, or one that failed,
// switches the disk to the pool for POOL_SPELL_MS; then synchronous writes
// are tried again.
//
// VSKY_DISK_WRITES=pool forces the pool (for A/B measurements and as an
// escape hatch); =sync (the default) uses the adaptive rule above.

/** A synchronous write slower than this sends the disk to the pool for a while. */
export const SLOW_WRITE_MS = 2;
/** How long a disk stays on the pool after a slow or failed synchronous write. */
export const POOL_SPELL_MS = 1000;

export type WriteModeName = 'sync' | 'pool';

export function defaultWriteMode(): WriteModeName {
  return process.env.VSKY_DISK_WRITES === 'pool' ? 'pool' : 'sync';
}

export class WriteMode {
  private readonly allowSync: boolean;
  private readonly slowMs: number;
  private readonly spellMs: number;
  /** performance.now() until which writes go through the pool. */
  private poolUntil = 0;
  /** Runs written synchronously, and synchronous writes that sent the disk to the pool (stats, tests). */
  syncRuns = 0;
  slowRuns = 0;

  constructor(name: WriteModeName = defaultWriteMode(), slowMs = SLOW_WRITE_MS, spellMs = POOL_SPELL_MS) {
    this.allowSync = name === 'sync';
    this.slowMs = slowMs;
    this.spellMs = spellMs;
  }

  /** Whether the next run is written on the event loop. */
  sync(): boolean {
    if (!this.allowSync) return false;
    if (this.poolUntil === 0) return true;
    if (performance.now() < this.poolUntil) return false;
    this.poolUntil = 0;
    return true;
  }

  /** A synchronous run took `ms` (and failed or not). */
  observe(ms: number, failed: boolean): void {
    this.syncRuns++;
    if (ms > this.slowMs || failed) {
      this.slowRuns++;
      this.poolUntil = performance.now() + this.spellMs;
    }
  }
}
