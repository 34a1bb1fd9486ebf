import type { SchedulerLimits } from './scheduler.js';

// Storage jobs that move data (copy jobs, manager/jobs/copy.ts) use disks
// too: the per-disk limit of the resync scheduler (scheduler.ts,
// `vsky manager --resync-per-disk`) counts them. A copy job claims every disk
// of its source's and destination's replicas before it starts: a disk at its
// limit (running resyncs plus other jobs' claims) makes the job wait,
// pending, and say which disks it waits for. While the job runs, its claim
// counts like a running resync in every scheduling pass, so no resync starts
// on those disks beyond the limit. The claim is released when the job ends.

export class JobDiskClaims {
  /** Job id -> the disks it claimed. */
  private readonly claims = new Map<string, readonly string[]>();

  constructor(
    private readonly limits: () => Pick<SchedulerLimits, 'perDisk' | 'perDiskOverride'>,
    /** Disk -> running resyncs using it now. */
    private readonly resyncLoad: () => ReadonlyMap<string, number>,
    /** A claim was released: queued resyncs may start. */
    private readonly released: (why: string) => void,
  ) {}

  /** Claims `disks` for job `id` if none is at its limit; returns the disks at their limit (then nothing is claimed). */
  tryClaim(id: string, disks: readonly string[]): string[] {
    if (this.claims.has(id)) return [];
    const load = new Map(this.resyncLoad());
    for (const [job, ds] of this.claims) if (job !== id) for (const d of ds) load.set(d, (load.get(d) ?? 0) + 1);
    const { perDisk, perDiskOverride } = this.limits();
    const full = [...new Set(disks)].filter((d) => (load.get(d) ?? 0) >= (perDiskOverride?.get(d) ?? perDisk));
    if (full.length === 0) this.claims.set(id, [...new Set(disks)]);
    return full;
  }

  release(id: string): void {
    if (this.claims.delete(id)) this.released(`job ${id} released its disks`);
  }

  /** The claims as running work for the scheduler. */
  running(): Array<{ id: string; disks: readonly string[] }> {
    return [...this.claims].map(([id, disks]) => ({ id: `job:${id}`, disks }));
  }
}
