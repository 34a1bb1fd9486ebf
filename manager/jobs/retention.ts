import { errorMessage } from '../../shared/errors.js';
import { moduleLogger } from '../../shared/logger.js';
import type { ManagerStore } from '../store.js';
import type { Volumes } from '../volumes.js';
import { isFinal, type JobRecord } from './records.js';

// How long ended job records are kept (docs/jobs.md "Job records"). The
// manager prunes ended jobs beyond the last `keepPerVolume` of each volume,
// and those that ended more than `maxAgeMs` ago, at start, after a job ends
// (at most once a minute) and on a timer. Never pruned:
//  - a job that has not ended;
//  - a volume's newest job;
//  - a volume's newest job that reached storage (took the lease: its id is
//    the last job record on the volume's chunks, what reconnaissance and
//    `vsky volume recon` name), so the manager can always say what it was;
//  - the job a DIRTY volume names (manager/jobs/dirty.ts).
// Jobs of deleted volumes follow the count and age rules like the others.

export interface JobRetention {
  /** Ended jobs kept per volume (newest first). */
  keepPerVolume: number;
  /** Ended jobs older than this (since they ended) are pruned. */
  maxAgeMs: number;
}

const log = moduleLogger('manager.jobs');
/** Ended job records are pruned this often (for the age limit), and after every job's end. */
const PRUNE_MS = 10 * 60 * 1000;

export const DEFAULT_JOB_RETENTION: JobRetention = { keepPerVolume: 20, maxAgeMs: 7 * 24 * 3600 * 1000 };

/** The ids of the jobs to prune (pure). `protect`: ids kept whatever their age (DIRTY volumes' jobs). */
export function jobsToPrune(jobs: Iterable<JobRecord>, r: JobRetention, now: number, protect: ReadonlySet<string> = new Set()): string[] {
  const byVolume = new Map<number, JobRecord[]>();
  for (const j of jobs) {
    let list = byVolume.get(j.volumeId);
    if (!list) byVolume.set(j.volumeId, (list = []));
    list.push(j);
  }
  const out: string[] = [];
  for (const list of byVolume.values()) {
    list.sort((a, b) => b.createdMs - a.createdMs || (a.id < b.id ? 1 : a.id > b.id ? -1 : 0));
    const lastOnStorage = list.find((j) => j.epoch > 0);
    let ended = 0;
    list.forEach((j, i) => {
      if (!isFinal(j.state)) return;
      ended++;
      if (i === 0 || j === lastOnStorage || protect.has(j.id)) return;
      const old = now - (j.endedMs || j.createdMs) > r.maxAgeMs;
      if (ended > r.keepPerVolume || old) out.push(j.id);
    });
  }
  return out;
}

/** Prunes the runner's job records: at start, on a timer, soon after a job ends. */
export class JobPruner {
  private timer: NodeJS.Timeout | undefined;

  constructor(
    private readonly store: ManagerStore,
    private readonly jobs: Map<string, JobRecord>,
    private readonly volumes: Volumes,
    private readonly retention: JobRetention = DEFAULT_JOB_RETENTION,
    private readonly now: () => number,
  ) {}

  async start(): Promise<void> {
    await this.prune();
    this.timer = setInterval(() => this.soon(), PRUNE_MS);
    this.timer.unref();
  }

  stop(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = undefined;
  }

  /** A job ended: prune in the background. */
  soon(): void {
    this.prune().catch((err: unknown) => log.warn({ err: errorMessage(err) }, 'pruning ended job records failed; retried later'));
  }

  /** Drops ended job records past the retention; returns how many. */
  async prune(): Promise<number> {
    const protect = new Set<string>();
    for (const { volume } of this.volumes.entries()) if (volume.dirty) protect.add(volume.dirty.jobId);
    const ids = jobsToPrune(this.jobs.values(), this.retention, this.now(), protect);
    if (ids.length === 0) return 0;
    const batch = this.store.batch();
    for (const id of ids) batch.delJob(id);
    await this.store.write(batch);
    for (const id of ids) this.jobs.delete(id);
    log.info({ pruned: ids.length, kept: this.jobs.size }, 'ended job records pruned');
    return ids.length;
  }
}
