import { ConflictError, InvalidArgumentError, StaleEpochError, VskyError, errorMessage } from '../../shared/errors.js';
import { pausePoint } from '../../shared/fault-points.js';
import { call, type ManagerClient } from '../../shared/grpc.js';
import { moduleLogger, type Logger } from '../../shared/logger.js';
import type { RunJobRequest__Output } from '../../proto/generated/vsky/head/RunJobRequest.js';
import type { JobReportReply__Output } from '../../proto/generated/vsky/manager/JobReportReply.js';
import type { NodeControlClients } from '../engine/node-control-clients.js';
import { copyPieces, planCopy, type CopyProgress } from './copy-job.js';
import { openJobVolume } from './job-volume.js';
import type { LinearVolume } from '../engine/linear-volume.js';
import type { NodePool } from '../engine/node-pool.js';
import type { VolumeMap } from '../attachments.js';

// A head agent hosts the storage jobs that move data (docs/jobs.md, "who runs
// a job"): the manager took the job's lease on the target (a new epoch),
// compare-and-set it DIRTY at generation g, and calls RunJob. Here: open the
// source for reading and the target for writing (internal volumes,
// job-volume.ts: the target's nodes fenced with the job's epoch), copy
// (copy-job.ts), flush, then the final compare-and-set {g+1, LEGAL, job
// succeeded} on every node of the target, under the job's epoch. Progress
// goes to the manager (ReportJob) every report interval; those reports and
// the heartbeats naming the job renew the job's lease. A reply saying stop
// (aborted, or the job is not ours any more) stops the copy. A refusal from a
// node (stale epoch: the manager fenced the job) is terminal: the job fails,
// nothing more is sent. The end is reported, retried for a while; if it
// cannot be, the manager's reconnaissance reads the outcome from the nodes.

export interface JobHostOptions {
  headId: string;
  pool: NodePool;
  clients: NodeControlClients;
  /** The manager's client (the link's), undefined while there is none. */
  manager: () => ManagerClient | undefined;
}

interface RunningJob {
  id: string;
  progress: CopyProgress;
  abort: AbortController;
  done: Promise<void>;
}

const FINAL_REPORT_TRIES = 20;

export class JobHost {
  private readonly jobs = new Map<string, RunningJob>();
  private readonly log: Logger;
  private closing = false;

  constructor(private readonly opts: JobHostOptions) {
    this.log = moduleLogger('head-jobs');
  }

  /** The jobs running here (the heartbeat names them: that renews their leases). */
  ids(): string[] {
    return [...this.jobs.keys()];
  }

  /** Starts a job in the background; a job already running here with this id: nothing. */
  start(req: RunJobRequest__Output): void {
    if (this.closing) throw new ConflictError('this head agent is stopping: it takes no jobs');
    if (req.kind !== 'copy') throw new InvalidArgumentError(`RunJob: unknown job kind "${req.kind}" (this head runs copy jobs)`);
    if (!req.jobId || !req.source || !req.target) throw new InvalidArgumentError('RunJob needs a job id, a source map and a target map');
    if (!Number.isSafeInteger(req.epoch) || req.epoch < 1) throw new InvalidArgumentError(`RunJob: invalid epoch ${req.epoch}`);
    if (req.source.size !== req.target.size || req.source.chunkSize !== req.target.chunkSize) {
      throw new InvalidArgumentError(`RunJob: source ${req.source.name} and target ${req.target.name} differ in size or chunk size`);
    }
    if (this.jobs.has(req.jobId)) return;
    const job: RunningJob = { id: req.jobId, progress: { done: 0, total: 0 }, abort: new AbortController(), done: Promise.resolve() };
    this.jobs.set(job.id, job);
    job.done = this.run(job, req).finally(() => this.jobs.delete(job.id));
  }

  /** Stops every job (the head stops): nothing is reported; the manager's reconnaissance decides them. */
  async close(): Promise<void> {
    this.closing = true;
    for (const j of this.jobs.values()) j.abort.abort(new ConflictError('the head agent is stopping'));
    await Promise.all([...this.jobs.values()].map((j) => j.done));
  }

  private async run(job: RunningJob, req: RunJobRequest__Output): Promise<void> {
    const log = this.log.child({ job: job.id, source: req.source!.name, target: req.target!.name, epoch: req.epoch });
    const started = Date.now();
    const timer = setInterval(() => void this.report(job, 'running'), Math.max(100, req.reportIntervalMs || 1000));
    timer.unref();
    let state: 'succeeded' | 'failed' | 'aborted' = 'failed';
    let error = '';
    try {
      log.info({ generation: req.expectedGeneration, throttleMibps: req.throttleMibps }, 'copy job started');
      await this.copy(job, req, log);
      state = 'succeeded';
      log.info({ bytes: job.progress.done, ms: Date.now() - started }, 'copy job succeeded: target flushed, final compare-and-set written');
    } catch (err) {
      error = errorMessage(err);
      if (job.abort.signal.aborted && !(err instanceof StaleEpochError)) state = 'aborted';
      const fencedByNodes = err instanceof StaleEpochError || (err instanceof VskyError && (err.code === 'ESTALE_EPOCH' || err.code === 'ESTALE_GENERATION'));
      log.error({ err: error, code: err instanceof VskyError ? err.code : undefined, refusedByNodes: fencedByNodes, bytes: job.progress.done },
        fencedByNodes ? 'copy job refused by the storage nodes (epoch/generation check): the job was fenced; stopping' : `copy job ${state}`);
    } finally {
      clearInterval(timer);
    }
    if (this.closing) return;
    await this.reportEnd(job, state, error, log);
  }

  private async copy(job: RunningJob, req: RunJobRequest__Output, log: Logger): Promise<void> {
    const sourceMap = req.source as VolumeMap;
    const targetMap = req.target as VolumeMap;
    let source: LinearVolume | undefined;
    let target: LinearVolume | undefined;
    try {
      source = await openJobVolume({ pool: this.opts.pool, map: sourceMap, epoch: Math.max(1, req.sourceEpoch), fence: false });
      target = await openJobVolume({ pool: this.opts.pool, map: targetMap, epoch: req.epoch, fence: true });
      const pieces = await planCopy({ sourceMap, targetMap, clients: this.opts.clients });
      job.progress.total = pieces.reduce((n, p) => n + p.length, 0);
      log.info({ pieces: pieces.length, bytes: job.progress.total, zeroed: pieces.filter((p) => p.zero).length }, 'copy planned from the written regions');
      void this.report(job, 'running');
      await copyPieces({
        source, target, sourceMap, targetMap, clients: this.opts.clients, progress: job.progress,
        signal: job.abort.signal, throttleMibps: req.throttleMibps,
      }, pieces);
      await target.flush();
      pausePoint('head.job.flushed');
      if (job.abort.signal.aborted) throw job.abort.signal.reason;
      await this.commit(req, targetMap);
    } finally {
      await source?.close(true).catch(() => undefined);
      await target?.close(true).catch(() => undefined);
    }
  }

  /** The final CAS {g+1, LEGAL, job succeeded} on every node of the target, under the job's epoch. */
  private async commit(req: RunJobRequest__Output, map: VolumeMap): Promise<void> {
    const nodes = new Set<string>();
    for (const s of map.segments) for (const r of s.replicas) if (r.controlAddress) nodes.add(r.controlAddress);
    const g = req.expectedGeneration;
    // One by one: a node that refuses (fenced) stops the rest.
    for (const address of nodes) {
      await call(this.opts.clients.get(address), 'SetVolumeState', {
        volumeId: map.volumeId, epoch: req.epoch, expectedGeneration: g, generation: g + 1, legality: 'LEGAL',
        jobId: req.jobId, jobKind: 'copy', jobOutcome: 'succeeded',
      }, 30_000);
    }
  }

  private async report(job: RunningJob, state: string, error = ''): Promise<JobReportReply__Output | undefined> {
    const m = this.opts.manager();
    if (m === undefined) return undefined;
    try {
      const reply = await call(m, 'ReportJob', { jobId: job.id, headId: this.opts.headId, state, done: job.progress.done, total: job.progress.total, error }, 5000);
      if (reply.stop && state === 'running' && !job.abort.signal.aborted) {
        this.log.warn({ job: job.id, reason: reply.reason }, 'the manager says stop: stopping the copy job');
        job.abort.abort(new ConflictError(`stopped by the manager: ${reply.reason}`));
      }
      return reply;
    } catch (err) {
      if (state !== 'running') throw err;
      this.log.debug({ job: job.id, err: errorMessage(err) }, 'progress report failed (the copy goes on)');
      return undefined;
    }
  }

  private async reportEnd(job: RunningJob, state: string, error: string, log: Logger): Promise<void> {
    for (let i = 0; i < FINAL_REPORT_TRIES; i++) {
      try {
        const reply = await this.report(job, state, error);
        if (reply !== undefined) {
          if (reply.stop && reply.reason) log.warn({ state, reason: reply.reason }, 'the manager did not take the job\'s end from this head');
          return;
        }
      } catch (err) {
        log.warn({ err: errorMessage(err), attempt: i }, 'reporting the job\'s end failed; retrying');
      }
      await new Promise((r) => setTimeout(r, 500));
    }
    log.error({ state }, 'the job\'s end could not be reported: the manager decides it from the nodes (reconnaissance)');
  }
}
