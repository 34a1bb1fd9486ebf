import { randomUUID } from 'node:crypto';
import {
  AlreadyExistsError, ConflictError, InvalidArgumentError, NotFoundError, errorMessage,
} from '../../shared/errors.js';
import { moduleLogger } from '../../shared/logger.js';
import type { ChunkFreer } from '../gc.js';
import type { PeerClients } from '../node-clients.js';
import type { PlacementModel } from '../placement.js';
import type { Registry } from '../registry.js';
import type { ManagerStore } from '../store.js';
import type { ChunkMapRecord, VolumeRecord } from '../types.js';
import type { VolumeEntry, Volumes } from '../volumes.js';
import { CopyJobs } from './copy.js';
import { dataProtocolPath, type JobDataPath } from './data-path.js';
import { FlattenJobs } from './flatten-job.js';
import { markDirty } from './dirty.js';
import { JOB_ID_RE, JOB_KINDS, isFinal, loadJobs, putJob, sameRequest, type JobKind, type JobRecord } from './records.js';
import { casVolume, type VolumeStateCas } from './node-cas.js';
import { Recon, type ReconReport } from './recon.js';
import { Verdicts } from './recon-verdicts.js';
import { checkResize, type ResizeContext } from './resize-chunks.js';
import { JobPruner, type JobRetention } from './retention.js';
import { type WipeContext } from './wipe.js';
import { runJobSteps } from './job-steps.js';

// The storage-job runner (docs/jobs.md). Every job has the same structure,
// oVirt's: take the lease (a new epoch; the volume must be detached, and
// attach is refused while a job runs), compare-and-set generation == g on
// every node (else it fails with a generation mismatch, nothing touched),
// mark the volume DIRTY (same CAS), do the work, then CAS {g+1, LEGAL, job
// record succeeded} under the job's epoch. An abort stops the worker and
// leaves the volume DIRTY at g; so does a failure or a crash, which
// reconnaissance (recon.ts) finds at the next start and fences.
//
// The manager itself is the worker of the kinds that need no data copy:
// wipe (zero every replica over the data protocol, DISCARD under the job's
// epoch) and resize (grow only: new segments placed like create's, the
// metadata changed in one batch). A copy moves data, so a head agent hosts
// it (copy.ts): the manager takes the lease and marks the destination DIRTY,
// the host copies and writes the final CAS. A resize of an attached volume
// runs online (online-resize.ts): no new epoch, the holder keeps its lease and
// gets the grown map before the final CAS; it is never fenced after a restart.
// The steps of a job with its volume held: job-steps.ts. Reconnaissance
// verdicts: recon-verdicts.ts; DIRTY volumes: dirty.ts.

const log = moduleLogger('manager.jobs');

export interface SubmitJobInput {
  jobId: string;
  kind: string;
  volume: string;
  /** 0: the volume's current generation. */
  expectedGeneration: number;
  args: Record<string, string>;
}

export interface JobsOptions {
  chunkSize: number;
  /** The worker's path to chunk data (default: the data protocol). */
  dataPath?: () => JobDataPath;
  now?: () => number;
  /** Ended job records kept (retention.ts; default DEFAULT_JOB_RETENTION). */
  retention?: JobRetention;
}

/** Thrown inside a worker when its job was aborted. */
class Aborted extends Error {}
/** Thrown inside a worker when the manager stops: the job stays running in the database; the next start's reconnaissance decides it. */
class Stopped extends Error {}

export class Jobs {
  private readonly jobs = new Map<string, JobRecord>();
  /** Volume id -> the job running on it (pending, running or aborting). */
  private readonly active = new Map<number, string>();
  private readonly workers = new Map<string, Promise<void>>();
  readonly recon: Recon;
  /** Copy jobs: checks, host choice, dispatch, the host's lease and reports. */
  readonly copies: CopyJobs;
  /** Flatten jobs: the holder head or the manager copies what a volume reads from its backing (flatten-job.ts). */
  readonly flattens: FlattenJobs;
  /** Overrides the worker's path to chunk data (tests). */
  dataPath?: () => JobDataPath;
  /** A volume's map changed and its holder may not have it (manager/core.ts: the map pusher re-sends it). */
  mapChanged?: (volumeId: number) => void;
  /** A job marked replicas stale (a wipe left out a node that did not answer): resync passes start (manager/core.ts). */
  staleMarked?: (volumeId: number, reason: string) => void;
  /** Reconnaissance verdicts: settle, roll forward, fence (recon-verdicts.ts). */
  readonly verdicts: Verdicts;
  private readonly pruner: JobPruner;

  constructor(
    private readonly store: ManagerStore,
    private readonly model: PlacementModel,
    private readonly registry: Registry,
    private readonly volumes: Volumes,
    private readonly peers: PeerClients,
    private readonly freer: ChunkFreer,
    private readonly opts: JobsOptions,
  ) {
    this.recon = new Recon(registry, volumes, peers);
    this.copies = new CopyJobs({
      jobs: this.jobs, active: this.active, recon: this.recon, store, now: () => this.now(),
      end: (j, state, error) => this.end(j, state, error), settle: (j, report) => this.settle(j, report),
    }, registry, volumes, peers);
    this.flattens = new FlattenJobs({
      store, recon: this.recon, now: () => this.now(), checkAbort: (j) => this.checkAbort(j), end: (j, state, error) => this.end(j, state, error, undefined, false),
      release: (id) => { this.release(id); this.pruner.soon(); }, mapChanged: (id) => this.mapChanged?.(id),
    }, registry, volumes, peers, model);
    this.pruner = new JobPruner(store, this.jobs, volumes, opts.retention, () => this.now());
    this.verdicts = new Verdicts({
      volumes, registry, peers, recon: this.recon, end: (j, state, error, volume, dirty) => this.end(j, state, error, volume, dirty),
      mapChanged: (id) => this.mapChanged?.(id),
    });
  }

  private now(): number {
    return this.opts.now?.() ?? Date.now();
  }

  private get ctx(): ResizeContext {
    return { store: this.store, model: this.model, registry: this.registry, peers: this.peers, freer: this.freer, now: () => this.now() };
  }

  /**
   * Loads the jobs. A job found pending or running was interrupted by the
   * previous process: reconnaissance decides what became of it (in the
   * background; `idle()` waits for it).
   */
  async load(): Promise<void> {
    for (const j of await loadJobs(this.store)) this.jobs.set(j.id, j);
    for (const j of this.jobs.values()) {
      if (isFinal(j.state)) continue;
      this.active.set(j.volumeId, j.id);
      const src = j.kind === 'copy' ? this.volumes.find(j.args.source ?? '') : undefined;
      if (src) this.active.set(src.volume.id, j.id);
      // A copy handed to its host runs on: the host gets a full lease TTL to report again.
      if (j.kind === 'copy' && j.host && j.state !== 'pending' && j.epoch > 0) this.copies.watch(j);
      else if (j.kind === 'flatten') this.track(j.id, this.run(j)); // resumes: copied regions are skipped
      else this.track(j.id, this.verdicts.resolveInterrupted(j));
    }
    await this.pruner.start();
  }

  /** Drops ended job records past the retention (retention.ts); returns how many. */
  prune(): Promise<number> {
    return this.pruner.prune();
  }

  /** Why the volume cannot be attached now ('' it can): a job runs on it. */
  blocking(volumeName: string): string {
    const e = this.volumes.find(volumeName);
    const id = e ? this.active.get(e.volume.id) : undefined;
    if (id === undefined) return '';
    const j = this.jobs.get(id)!;
    // A flatten copying through the holder head leaves attach alone (a new holder gets the next segments).
    if (j.kind === 'flatten' && j.online) return '';
    return `volume ${volumeName} has a ${j.kind} job (${j.id}, ${j.state}) running: it cannot be attached until the job ends (vsky job show ${j.id}; vsky job abort ${j.id})`;
  }

  get(id: string): JobRecord {
    const j = this.jobs.get(id);
    if (!j) throw new NotFoundError(`no job "${id}": see vsky job list`, { jobId: id });
    return j;
  }

  list(volume = ''): JobRecord[] {
    return [...this.jobs.values()].filter((j) => !volume || j.volume === volume);
  }

  /** Resolves once no worker runs (tests, close). */
  async idle(): Promise<void> { while (this.workers.size > 0) await Promise.all([...this.workers.values()]); }

  /** Accepts a job and starts it in the background. Idempotent on the job id: the same request returns the same job. */
  async submit(input: SubmitJobInput): Promise<JobRecord> {
    const jobId = input.jobId || randomUUID();
    if (!JOB_ID_RE.test(jobId)) throw new InvalidArgumentError(`invalid job id "${jobId}": use 1-48 characters from A-Z a-z 0-9 . _ : -`, { jobId });
    const kind = input.kind as JobKind;
    if (!JOB_KINDS.includes(kind)) throw new InvalidArgumentError(`unknown job kind "${input.kind}": use ${JOB_KINDS.join(' or ')}`);
    const existing = this.jobs.get(jobId);
    if (existing) {
      if (!sameRequest(existing, kind, input)) {
        throw new AlreadyExistsError(`job ${jobId} already exists as a ${existing.kind} of ${existing.volume} (generation ${existing.expectedGeneration}): a job id names one request; choose another id`, { jobId });
      }
      return existing;
    }
    if (!Number.isSafeInteger(input.expectedGeneration) || input.expectedGeneration < 0) {
      throw new InvalidArgumentError(`invalid expected generation ${input.expectedGeneration}`);
    }
    const target = this.volumes.find(input.volume)?.volume;
    if (target?.kind === 'snapshot') {
      // Its chunks refuse every write (READ_ONLY, docs/snapshots.md): a job would only leave it DIRTY.
      throw new InvalidArgumentError(`${target.name} is a snapshot (read-only): a ${kind} job cannot change it; clone it (vsky volume clone ${target.name} NEW) and ${kind} the clone`, { volume: target.name });
    }
    const args = { ...input.args };
    const host = kind === 'copy' ? await this.copies.prepare(input.volume, args) : undefined;
    if (kind === 'flatten') this.flattens.prepare(input.volume, args);
    const { volume } = this.volumes.entry(input.volume);
    if (kind === 'resize') checkResize(volume, args);
    const busy = this.active.get(volume.id);
    if (busy !== undefined) throw new ConflictError(`volume ${volume.name} already has a job running (${busy}): one job per volume at a time`, { jobId: busy });
    const job: JobRecord = {
      id: jobId, kind, volume: volume.name, volumeId: volume.id, expectedGeneration: input.expectedGeneration || volume.generation, args,
      state: 'pending', error: '', epoch: 0, done: 0, total: 0, createdMs: this.now(), startedMs: 0, endedMs: 0,
      ...(host ? { host } : {}),
    };
    this.active.set(volume.id, jobId);
    const src = kind === 'copy' ? this.volumes.find(args.source ?? '') : undefined;
    if (src) this.active.set(src.volume.id, jobId);
    this.jobs.set(jobId, job);
    try {
      await putJob(this.store, job);
    } catch (err) {
      this.release(jobId);
      this.jobs.delete(jobId);
      throw err;
    }
    log.info({ job: jobId, kind, volume: volume.name, generation: job.expectedGeneration, args }, 'job submitted');
    this.track(jobId, this.run(job));
    return job;
  }

  /** Asks a job to stop. Pending: aborted at once. Running: the worker stops at its next step (the volume stays DIRTY at g). */
  async abort(id: string): Promise<JobRecord> {
    const j = this.get(id);
    if (isFinal(j.state)) throw new ConflictError(`job ${id} already ended (${j.state}${j.error ? `: ${j.error}` : ''}); there is nothing to abort`, { jobId: id, state: j.state });
    if (j.state === 'aborting') return j;
    j.state = 'aborting';
    await putJob(this.store, j);
    log.warn({ job: id, volume: j.volume }, 'job abort requested');
    return j;
  }

  private track(id: string, p: Promise<void>): void {
    const w = p.catch((err: unknown) => log.error({ job: id, err: errorMessage(err) }, 'job worker failed unexpectedly')).finally(() => this.workers.delete(id));
    this.workers.set(id, w);
  }

  /**
   * Records the job's end. `dirty`: the volume is left DIRTY (attach refuses
   * it, volume.dirty); default: a success clears it, any other end sets it
   * once the job took its lease (its DIRTY compare-and-set may have reached a node).
   */
  private async end(j: JobRecord, state: JobRecord['state'], error = '', volume?: VolumeRecord, dirty?: boolean): Promise<void> {
    j.state = state;
    j.error = error;
    j.endedMs = this.now();
    const batch = this.store.batch().putJob(j);
    const v = volume ?? this.volumes.byVolumeId(j.volumeId)?.volume;
    if (v && markDirty(v, j, state === 'succeeded' ? false : dirty ?? j.epoch > 0)) batch.putVolume(v);
    else if (volume) batch.putVolume(volume);
    if (state !== 'succeeded') {
      batch.event(`job.${state as 'failed' | 'aborted' | 'fenced'}`, `volume:${j.volume}`, `${j.kind} job ${j.id} ${state}${error ? `: ${error}` : ''}`, { job: j.id, kind: j.kind, generation: j.expectedGeneration, epoch: j.epoch });
    }
    await this.store.write(batch);
    this.release(j.id);
    this.pruner.soon();
    log[state === 'succeeded' ? 'info' : 'warn']({ job: j.id, kind: j.kind, volume: j.volume, state, error: error || undefined }, `job ${state}`);
  }

  /** The volumes job `id` held (its volume; a copy's source too) are free again. */
  private release(id: string): void {
    for (const [volumeId, job] of this.active) if (job === id) this.active.delete(volumeId);
    this.copies.disks?.release(id);
  }

  private stopping = false;

  /** Ends `j` the way reconnaissance's verdict says (recon-verdicts.ts; copy.ts calls it). */
  settle(j: JobRecord, report: ReconReport): Promise<void> {
    return this.verdicts.settle(j, report);
  }

  /** Fences job `j` (recon-verdicts.ts). */
  fence(j: JobRecord, report: ReconReport): Promise<void> {
    return this.verdicts.fence(j, report);
  }

  /** The manager stops: workers stop at their next step without recording anything (reconnaissance decides at the next start). */
  async stop(): Promise<void> {
    this.stopping = true;
    this.pruner.stop();
    await this.copies.stop();
    await this.idle();
  }

  private checkAbort(j: JobRecord): void {
    if (this.stopping) throw new Stopped();
    if (j.state === 'aborting') throw new Aborted();
  }

  private cas(map: ChunkMapRecord, req: VolumeStateCas, volumeId: number): Promise<void> {
    return casVolume(this.peers, this.registry, map, volumeId, req);
  }

  private get wipeCtx(): WipeContext {
    return {
      store: this.store, registry: this.registry, peers: this.peers, path: this.dataPath ?? this.opts.dataPath ?? dataProtocolPath,
      checkAbort: (x) => this.checkAbort(x), staleMarked: (id, why) => this.staleMarked?.(id, why),
    };
  }

  /** Jobs whose DIRTY compare-and-set was sent (a failure from there on leaves the volume DIRTY at g). */
  private readonly dirtied = new Set<string>();

  private async run(j: JobRecord): Promise<void> {
    if (j.state === 'aborting') return this.end(j, 'aborted', 'aborted before it started; nothing was touched', undefined, false);
    try {
      if (j.kind === 'flatten') return await this.flattens.run(j);
      if (j.kind === 'copy') await this.copies.waitForDisks(j, () => this.checkAbort(j));
      await this.volumes.exclusive(j.volume, (e) => this.work(j, e));
      // A copy: the lease is taken and the destination DIRTY; its host does the rest.
      if (j.kind === 'copy' && j.state === 'running' && !this.stopping) await this.copies.dispatch(j);
    } catch (err) {
      if (isFinal(j.state) || err instanceof Stopped || this.stopping) return;
      const dirty = this.dirtied.has(j.id) ? ` (volume ${j.volume} stays DIRTY at generation ${j.expectedGeneration})` : '';
      if (err instanceof Aborted || (j.state as string) === 'aborting') return this.end(j, 'aborted', `aborted${dirty}`, undefined, this.dirtied.has(j.id));
      const again = j.kind === 'flatten' ? ` (volume ${j.volume} keeps its backing; what was copied is its own: run vsky volume flatten ${j.volume} again)` : '';
      return this.end(j, 'failed', `${errorMessage(err)}${dirty}${again}`, undefined, this.dirtied.has(j.id));
    } finally {
      this.dirtied.delete(j.id);
    }
  }

  /** The job's structure, the volume held (volumes.exclusive): job-steps.ts. */
  private work(j: JobRecord, e: VolumeEntry): Promise<void> {
    return runJobSteps({
      store: this.store, registry: this.registry, volumes: this.volumes, peers: this.peers, copies: this.copies,
      resize: this.ctx, wipe: this.wipeCtx, dirtied: this.dirtied, mapChanged: this.mapChanged, now: () => this.now(),
      checkAbort: (x) => this.checkAbort(x), cas: (map, req, id) => this.cas(map, req, id),
      succeeded: (x) => { this.active.delete(x.volumeId); this.pruner.soon(); },
    }, j, e);
  }
}
