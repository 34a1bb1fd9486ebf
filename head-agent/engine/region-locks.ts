// Region locks of one segment while a resync copies it. A foreground mutation
// holds its regions SHARED while it is in flight; the resync copier takes a
// run of regions EXCLUSIVE while it reads the run from a source and writes it
// to the target. Exclusive waits for the shared holders to finish, and new
// mutations into the run wait for the copy: so the copy never writes older
// data over a newer foreground write on the target, and a foreground write
// never lands between the copy's read and its write.
//
// Installed on a mirror only while a resync runs (mirror.ts keeps the hot path
// lock-free otherwise). Writers take all their regions or none (no waiting
// while holding), and the copier never waits for anything while holding, so
// there is no deadlock.

interface ExclusiveWait {
  first: number;
  last: number;
  resolve: () => void;
}

export class RegionLocks {
  readonly regionSize: number;
  readonly regionCount: number;
  /** Foreground mutations in flight per region. */
  private readonly shared: Int32Array;
  /** Held (or being drained for) by a copier. */
  private readonly exclusive: Uint8Array;
  /** Callbacks to run when an exclusive run is released (writers and other copiers retry then). */
  private released: (() => void)[] = [];
  /** Copiers waiting for shared holders of their run to drain. */
  private draining: ExclusiveWait[] = [];
  /** Resyncs using this table (two targets of one segment share it). */
  users = 0;

  constructor(regionSize: number, regionCount: number) {
    this.regionSize = regionSize;
    this.regionCount = regionCount;
    this.shared = new Int32Array(regionCount);
    this.exclusive = new Uint8Array(regionCount);
  }

  /** First and last region covering [offset, offset + length) (length > 0). */
  private span(offset: number, length: number): [number, number] {
    const first = Math.floor(offset / this.regionSize);
    const last = Math.min(Math.floor((offset + length - 1) / this.regionSize), this.regionCount - 1);
    return [first, last];
  }

  /** Takes shared holds on the regions of the range, or none (false) when a copy holds one. */
  tryShared(offset: number, length: number): boolean {
    const [first, last] = this.span(offset, length);
    for (let r = first; r <= last; r++) if (this.exclusive[r] !== 0) return false;
    for (let r = first; r <= last; r++) this.shared[r]!++;
    return true;
  }

  /** Resolves once shared holds on the range are taken. */
  async acquireShared(offset: number, length: number): Promise<void> {
    while (!this.tryShared(offset, length)) await this.nextRelease();
  }

  releaseShared(offset: number, length: number): void {
    const [first, last] = this.span(offset, length);
    let drained = false;
    for (let r = first; r <= last; r++) {
      if (--this.shared[r]! === 0 && this.exclusive[r] !== 0) drained = true;
    }
    if (drained) this.checkDraining();
  }

  /**
   * Takes regions first..last exclusively: from now on new mutations into
   * them wait; resolves once the mutations already in flight there are done.
   */
  async acquireExclusive(first: number, last: number): Promise<void> {
    for (;;) {
      let busy = false;
      for (let r = first; r <= last && !busy; r++) busy = this.exclusive[r] !== 0;
      if (!busy) break;
      await this.nextRelease();
    }
    for (let r = first; r <= last; r++) this.exclusive[r] = 1;
    if (this.sharedFree(first, last)) return;
    await new Promise<void>((resolve) => this.draining.push({ first, last, resolve }));
  }

  releaseExclusive(first: number, last: number): void {
    for (let r = first; r <= last; r++) this.exclusive[r] = 0;
    const waiters = this.released;
    this.released = [];
    for (const w of waiters) w();
  }

  /** Foreground mutations holding any region (tests). */
  get sharedHolds(): number {
    let n = 0;
    for (let r = 0; r < this.regionCount; r++) n += this.shared[r]!;
    return n;
  }

  private nextRelease(): Promise<void> {
    return new Promise((resolve) => this.released.push(resolve));
  }

  private sharedFree(first: number, last: number): boolean {
    for (let r = first; r <= last; r++) if (this.shared[r] !== 0) return false;
    return true;
  }

  private checkDraining(): void {
    const still: ExclusiveWait[] = [];
    for (const w of this.draining) {
      if (this.sharedFree(w.first, w.last)) w.resolve();
      else still.push(w);
    }
    this.draining = still;
  }
}
