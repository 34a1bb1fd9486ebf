import { randomUUID } from 'node:crypto';
import { nextCounter } from '../../shared/counters.js';
import {
  AlreadyExistsError, ConflictError, InvalidArgumentError, NotFoundError, StaleGenerationError, VskyError, errorMessage,
} from '../../shared/errors.js';
import { crashPoint } from '../../shared/fault-points.js';
import { moduleLogger } from '../../shared/logger.js';
import { formatSize } from '../../shared/units.js';
import type { ChunkFreer } from '../gc.js';
import { mapLimit, type PeerClients } from '../node-clients.js';
import type { PlacementModel } from '../placement.js';
import type { Registry } from '../registry.js';
import type { ManagerStore } from '../store.js';
import { forEachReplica, type ChunkMapRecord, type VolumeRecord } from '../types.js';
import type { VolumeEntry, Volumes } from '../volumes.js';
import { CopyJobs } from './copy.js';
import { dataProtocolPath, type JobDataPath } from './data-path.js';
import { JOB_ID_RE, JOB_KINDS, isFinal, loadJobs, putJob, type JobKind, type JobRecord } from './records.js';
import { growOnline, grownTo, onlineHolder } from './online-resize.js';
import { Recon, type ReconReport } from './recon.js';
import { allocateGrowth, appendSegments, type ResizeContext } from './resize-chunks.js';

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
// the host copies and writes the final CAS.
// A resize of an attached volume runs online
// (online-resize.ts): no new epoch, the holder keeps its lease and gets the
// grown map before the final CAS, and it is never fenced after a restart.

const log = moduleLogger('manager.jobs');
/** DISCARD requests are this big at most: the worker checks for an abort between them. */
const ZERO_STEP = 32 * 1024 * 1024;

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
  /** Overrides the worker's path to chunk data (tests). */
  dataPath?: () => JobDataPath;
  /** A volume's map changed and its holder may not have it (manager/core.ts: the map pusher re-sends it). */
  mapChanged?: (volumeId: number) => void;

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
      else this.track(j.id, this.resolveInterrupted(j));
    }
  }

  /** Why the volume cannot be attached now ('' it can): a job runs on it. */
  blocking(volumeName: string): string {
    const e = this.volumes.find(volumeName);
    const id = e ? this.active.get(e.volume.id) : undefined;
    if (id === undefined) return '';
    const j = this.jobs.get(id)!;
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
  async idle(): Promise<void> {
    while (this.workers.size > 0) await Promise.all([...this.workers.values()]);
  }

  /** Accepts a job and starts it in the background. Idempotent on the job id: the same request returns the same job. */
  async submit(input: SubmitJobInput): Promise<JobRecord> {
    const jobId = input.jobId || randomUUID();
    if (!JOB_ID_RE.test(jobId)) throw new InvalidArgumentError(`invalid job id "${jobId}": use 1-48 characters from A-Z a-z 0-9 . _ : -`, { jobId });
    const kind = input.kind as JobKind;
    if (!JOB_KINDS.includes(kind)) throw new InvalidArgumentError(`unknown job kind "${input.kind}": use ${JOB_KINDS.join(' or ')}`);
    const existing = this.jobs.get(jobId);
    if (existing) {
      const same = existing.kind === kind && existing.volume === input.volume
        && (input.expectedGeneration === 0 || input.expectedGeneration === existing.expectedGeneration)
        && JSON.stringify(sortKeys(existing.args)) === JSON.stringify(sortKeys(input.args));
      if (!same) {
        throw new AlreadyExistsError(`job ${jobId} already exists as a ${existing.kind} of ${existing.volume} (generation ${existing.expectedGeneration}): a job id names one request; choose another id`, { jobId });
      }
      return existing;
    }
    if (!Number.isSafeInteger(input.expectedGeneration) || input.expectedGeneration < 0) {
      throw new InvalidArgumentError(`invalid expected generation ${input.expectedGeneration}`);
    }
    const args = { ...input.args };
    const host = kind === 'copy' ? await this.copies.prepare(input.volume, args) : undefined;
    const { volume } = this.volumes.entry(input.volume);
    if (kind === 'resize') this.checkResize(volume, args);
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

  private checkResize(v: VolumeRecord, args: Record<string, string>): void {
    const size = Number(args.size);
    if (!Number.isSafeInteger(size) || size <= 0 || size % 512 !== 0) {
      throw new InvalidArgumentError(`resize: invalid size "${args.size ?? ''}": give a positive number of bytes, a multiple of 512`);
    }
    if (size < v.size) throw new InvalidArgumentError(`resize of ${v.name}: ${formatSize(size)} is smaller than its ${formatSize(v.size)}: volumes only grow; nothing changed`);
    if (size === v.size) throw new InvalidArgumentError(`resize of ${v.name}: it is already ${formatSize(size)}; nothing changed`);
  }

  private async end(j: JobRecord, state: JobRecord['state'], error = '', volume?: VolumeRecord): Promise<void> {
    j.state = state;
    j.error = error;
    j.endedMs = this.now();
    const batch = this.store.batch().putJob(j);
    if (volume) batch.putVolume(volume);
    if (state !== 'succeeded') {
      batch.event(`job.${state as 'failed' | 'aborted' | 'fenced'}`, `volume:${j.volume}`, `${j.kind} job ${j.id} ${state}${error ? `: ${error}` : ''}`, { job: j.id, kind: j.kind, generation: j.expectedGeneration, epoch: j.epoch });
    }
    await this.store.write(batch);
    this.release(j.id);
    log[state === 'succeeded' ? 'info' : 'warn']({ job: j.id, kind: j.kind, volume: j.volume, state, error: error || undefined }, `job ${state}`);
  }

  /** The volumes job `id` held (its volume; a copy's source too) are free again. */
  private release(id: string): void {
    for (const [volumeId, job] of this.active) if (job === id) this.active.delete(volumeId);
  }

  private stopping = false;

  /** The manager stops: workers stop at their next step without recording anything (reconnaissance decides at the next start). */
  async stop(): Promise<void> {
    this.stopping = true;
    await this.copies.stop();
    await this.idle();
  }

  private checkAbort(j: JobRecord): void {
    if (this.stopping) throw new Stopped();
    if (j.state === 'aborting') throw new Aborted();
  }

  /** The volume's nodes: control address -> data address, for every server holding a chunk of it. */
  private nodesOf(map: ChunkMapRecord): Map<string, string> {
    const out = new Map<string, string>();
    for (const d of map.disks) {
      const s = this.registry.serverOfDisk(d);
      if (s) out.set(s.controlAddress, s.dataAddress);
    }
    return out;
  }

  /** The CAS on every node of the volume (in parallel); the first refusal is thrown. */
  private async cas(map: ChunkMapRecord, req: { epoch: number; expectedGeneration: number; generation: number; legality: 'LEGAL' | 'DIRTY'; jobId: string; jobKind: string; jobOutcome: string; volumeSize?: number; segmentCount?: number; raiseLagging?: boolean }, volumeId: number): Promise<void> {
    const set = this.peers.node.setVolumeState;
    if (!set) throw new VskyError('EINTERNAL', 'the storage-node client has no SetVolumeState');
    const results = await mapLimit([...this.nodesOf(map).keys()], 16, (a) => set(a, { volumeId, ...req }));
    const failed = results.find((r) => r.status === 'rejected') as PromiseRejectedResult | undefined;
    if (failed) throw failed.reason;
  }

  /** Jobs whose DIRTY compare-and-set was sent (a failure from there on leaves the volume DIRTY at g). */
  private readonly dirtied = new Set<string>();

  private async run(j: JobRecord): Promise<void> {
    if (j.state === 'aborting') return this.end(j, 'aborted', 'aborted before it started; nothing was touched');
    try {
      await this.volumes.exclusive(j.volume, (e) => this.work(j, e));
      // A copy: the lease is taken and the destination DIRTY; its host does the rest.
      if (j.kind === 'copy' && j.state === 'running' && !this.stopping) await this.copies.dispatch(j);
    } catch (err) {
      if (isFinal(j.state) || err instanceof Stopped || this.stopping) return;
      const dirty = this.dirtied.has(j.id) ? ` (volume ${j.volume} stays DIRTY at generation ${j.expectedGeneration})` : '';
      if (err instanceof Aborted || (j.state as string) === 'aborting') return this.end(j, 'aborted', `aborted${dirty}`);
      return this.end(j, 'failed', `${errorMessage(err)}${dirty}`);
    } finally {
      this.dirtied.delete(j.id);
    }
  }

  /** The job's structure, the volume held (volumes.exclusive): lease, CAS g + DIRTY, work, CAS g+1 + LEGAL. */
  private async work(j: JobRecord, e: VolumeEntry): Promise<void> {
    const { volume } = e;
    const online = j.kind === 'resize' && Boolean(volume.attachedHead);
    if (!online && (volume.attachedHead || volume.standbyHead)) {
      const head = this.registry.head(volume.attachedHead || volume.standbyHead || '')?.name ?? volume.attachedHead;
      throw new ConflictError(`volume ${volume.name} is attached to head ${head}: ${j.kind} jobs run on detached volumes for now; detach it first (vsky volume detach ${volume.name})`);
    }
    const claimWait = this.registry.claimWaitMs(volume);
    if (claimWait > 0) {
      throw new ConflictError(`volume ${volume.name} was rebuilt from storage and a head may still hold it: a job may take its lease in ${(claimWait / 1000).toFixed(1)} s; nothing was touched`);
    }
    const g = j.expectedGeneration;
    if (volume.generation !== g) {
      throw new StaleGenerationError(`generation mismatch: volume ${volume.name} is at generation ${volume.generation}, the job expected ${g}; nothing was touched`, { expected: g, actual: volume.generation });
    }
    if (j.kind === 'resize') this.checkResize(volume, j.args);
    if (j.kind === 'copy') this.copies.checkDetached(this.volumes.entry(j.args.source ?? '').volume, 'source');
    this.checkAbort(j);
    if (online) {
      // The holder keeps the lease: the job works under its epoch (online-resize.ts).
      j.epoch = onlineHolder(this.ctx, volume).epoch;
      j.online = true;
    } else {
      // The lease: a new epoch, durable before any node hears of it.
      volume.epoch = nextCounter(volume.epoch, `volume ${volume.name}'s lease epoch`);
      j.epoch = volume.epoch;
    }
    j.state = 'running';
    j.startedMs = this.now();
    await this.store.write(this.store.batch().putVolume(volume).putJob(j));
    const stamp = { jobId: j.id, jobKind: j.kind };
    // CAS generation == g and mark DIRTY, on every node, under the job's epoch.
    this.dirtied.add(j.id);
    // Nodes that missed map-only generation bumps (resyncs, stale marks) are raised to g.
    await this.cas(e.map, { epoch: j.epoch, expectedGeneration: g, generation: g, legality: 'DIRTY', ...stamp, jobOutcome: 'running', raiseLagging: true }, volume.id);
    crashPoint('manager.job.dirty');
    this.checkAbort(j);
    if (j.kind === 'copy') return; // its host copies and writes the final CAS (copy.ts)
    let next: { volume: VolumeRecord; map?: ChunkMapRecord } = { volume: { ...volume, generation: g + 1 } };
    if (j.kind === 'wipe') await this.wipe(j, e);
    else if (online) next = await this.growOnline(j, e);
    else next = await this.resize(j, e);
    crashPoint('manager.job.worked');
    if (!online) this.checkAbort(j); // online: the holder has the new size; too late to abort
    // Done: g+1, LEGAL, the job's record, in one CAS per node, conditional on the epoch.
    // A resize's CAS also gives every chunk's identity the new size and segment count (a rebuild from storage reads them).
    const shape = j.kind === 'resize' ? { volumeSize: next.volume.size, segmentCount: next.volume.segmentCount } : {};
    await this.cas(next.map ?? e.map, { epoch: j.epoch, expectedGeneration: g, generation: g + 1, legality: 'LEGAL', ...stamp, jobOutcome: 'succeeded', ...shape }, volume.id);
    crashPoint('manager.job.committed');
    next.volume.generation = g + 1;
    j.done = j.total;
    const batch = this.store.batch().putVolume(next.volume);
    if (next.map) batch.putChunkMap(next.map);
    const grew = j.kind === 'resize' ? `, size ${formatSize(next.volume.size)}${online ? ' (online)' : ''}` : '';
    batch.event('job.succeeded', `volume:${volume.name}`, `${j.kind} job ${j.id} succeeded: generation ${g} -> ${g + 1}${grew}`, { job: j.id, kind: j.kind, generation: g + 1, epoch: j.epoch, online });
    j.state = 'succeeded';
    j.endedMs = this.now();
    batch.putJob(j);
    await this.store.write(batch);
    Object.assign(volume, next.volume);
    if (next.map) Object.assign(e.map, next.map);
    this.active.delete(j.volumeId);
    log.info({ job: j.id, kind: j.kind, volume: volume.name, generation: g + 1, ms: j.endedMs - j.startedMs }, 'job succeeded');
  }

  /** Zeroes every replica of every segment (DISCARD under the job's epoch), then flushes each. */
  private async wipe(j: JobRecord, e: VolumeEntry): Promise<void> {
    const { volume, map } = e;
    const replicas: Array<{ segment: number; idSlot: number; data: string; length: number }> = [];
    forEachReplica(map, (r) => {
      const s = this.registry.serverOfDisk(r.diskId);
      if (!s) throw new ConflictError(`replica ${r.slot} of segment ${r.segment} of ${volume.name} is on an unknown disk ${r.diskId}`);
      replicas.push({ segment: r.segment, idSlot: r.idSlot, data: s.dataAddress, length: Math.min(volume.chunkSize, volume.size - r.segment * volume.chunkSize) });
    });
    j.total = replicas.reduce((n, r) => n + r.length, 0);
    j.done = 0;
    const path = (this.dataPath ?? this.opts.dataPath ?? dataProtocolPath)();
    try {
      const results = await mapLimit(replicas, 8, async (r) => {
        for (let off = 0; off < r.length; off += ZERO_STEP) {
          this.checkAbort(j);
          const len = Math.min(ZERO_STEP, r.length - off);
          await path.zero(r.data, volume.id, r.segment, r.idSlot, j.epoch, off, len);
          j.done += len;
        }
        await path.flush(r.data, volume.id, r.segment, r.idSlot, j.epoch);
      });
      const failed = results.find((r) => r.status === 'rejected') as PromiseRejectedResult | undefined;
      if (failed) throw failed.reason;
    } finally {
      await path.close();
    }
  }

  /** Grow, detached: new segments placed like a create's and allocated under the job's epoch; returns the new records (committed by the caller). */
  private async resize(j: JobRecord, e: VolumeEntry): Promise<{ volume: VolumeRecord; map: ChunkMapRecord }> {
    const { volume, map } = e;
    const size = Number(j.args.size);
    const segmentCount = Math.ceil(size / volume.chunkSize);
    const placed = await allocateGrowth(this.ctx, j, volume, size, j.epoch);
    const next = structuredClone(map);
    if (segmentCount > volume.segmentCount) appendSegments(next, volume.segmentCount, segmentCount, placed);
    next.segmentCount = segmentCount;
    return { volume: { ...volume, size, segmentCount }, map: next };
  }

  /** Grow, attached: the holder gets the map before the final CAS (online-resize.ts); the records are changed in place. */
  private async growOnline(j: JobRecord, e: VolumeEntry): Promise<{ volume: VolumeRecord; map: ChunkMapRecord }> {
    await growOnline({ ...this.ctx, checkAbort: (x) => this.checkAbort(x), mapChanged: this.mapChanged }, j, e);
    return { volume: e.volume, map: e.map };
  }

  /**
   * A job the previous process left pending or running: pending (never
   * started, or started and not yet durable as running) and running are
   * decided by reconnaissance from the nodes' chunk records.
   */
  private async resolveInterrupted(j: JobRecord): Promise<void> {
    if (j.state === 'pending' && j.epoch === 0) {
      return this.end(j, 'failed', 'the manager restarted before the job started; nothing was touched; submit it again with a new id');
    }
    for (let attempt = 0; ; attempt++) {
      try {
        if (j.online) return await this.settleOnline(j);
        const report = await this.recon.investigate(j.volume, j);
        await this.settle(j, report);
        return;
      } catch (err) {
        log.warn({ job: j.id, err: errorMessage(err), attempt }, 'reconnaissance of an interrupted job failed; retrying');
        if (attempt >= 30) return this.end(j, 'failed', `interrupted by a manager restart; reconnaissance failed: ${errorMessage(err)}`);
        await new Promise((r) => setTimeout(r, 1000));
      }
    }
  }

  /**
   * An online resize the previous process left running is never fenced (that
   * would take the lease from a running VM). If its new size was committed,
   * the holder may be using the new chunks: finish it (the final CAS under the
   * volume's epoch, g+1) and have the map pushed to the holder. Otherwise its
   * chunks are garbage (GC frees them) and it failed; the volume stays DIRTY at g.
   */
  private async settleOnline(j: JobRecord): Promise<void> {
    await this.volumes.exclusive(j.volume, async (e) => {
      const { volume } = e;
      const g = j.expectedGeneration;
      if (!grownTo(j, volume)) {
        return this.end(j, 'failed', `interrupted by a manager restart before its new size was committed: the size is unchanged (${formatSize(volume.size)}), its new chunks are garbage for GC; the volume stays DIRTY at generation ${g}`);
      }
      const shape = { volumeSize: volume.size, segmentCount: volume.segmentCount };
      try {
        await this.cas(e.map, { epoch: volume.epoch, expectedGeneration: g, generation: g + 1, legality: 'LEGAL', jobId: j.id, jobKind: j.kind, jobOutcome: 'succeeded', ...shape }, volume.id);
      } catch (err) {
        this.mapChanged?.(volume.id);
        return this.end(j, 'failed', `interrupted by a manager restart after its new size (${formatSize(volume.size)}) was committed; the final compare-and-set failed: ${errorMessage(err)}; the volume stays DIRTY at generation ${g}`);
      }
      volume.generation = Math.max(volume.generation, g + 1);
      await this.end(j, 'succeeded', '', volume);
      this.mapChanged?.(volume.id);
    });
  }

  /** Acts on reconnaissance's verdict about job `j`: record a success, or fence. */
  async settle(j: JobRecord, report: ReconReport): Promise<void> {
    const e = this.volumes.entry(j.volume);
    const g = j.expectedGeneration;
    if (report.verdict === 'succeeded') {
      const v = e.volume;
      if (v.generation < g + 1) v.generation = g + 1;
      return this.end(j, 'succeeded', '', v);
    }
    if (report.verdict === 'fenced') return this.end(j, 'fenced', report.explanation, e.volume);
    if (report.verdict === 'other') return this.end(j, 'failed', report.explanation);
    // A wipe's and a copy's data were flushed before their last CAS began: the rest may be committed.
    if (report.verdict === 'roll_forward' && (j.kind === 'wipe' || j.kind === 'copy')) return this.rollForward(j, report);
    // interrupted or never started: fence it.
    await this.fence(j, report);
  }

  /**
   * A wipe whose last CAS reached only some nodes: every replica was zeroed
   * and flushed before it, so the rest are committed too (g -> g+1, under a
   * new epoch). A resize is fenced instead: its new chunk map was not
   * committed by the manager.
   */
  private async rollForward(j: JobRecord, report: ReconReport): Promise<void> {
    await this.volumes.exclusive(j.volume, async (e) => {
      const { volume } = e;
      const g = j.expectedGeneration;
      volume.epoch = nextCounter(volume.epoch, `volume ${volume.name}'s lease epoch`);
      await this.volumes.saveVolume(volume);
      for (const n of report.nodes) {
        if (n.chunks === 0) continue;
        await this.peers.node.setVolumeState!(n.controlAddress, {
          volumeId: volume.id, epoch: volume.epoch, expectedGeneration: g, generation: g + 1, legality: 'LEGAL', jobId: j.id, jobKind: j.kind, jobOutcome: 'succeeded',
        });
      }
      volume.generation = Math.max(volume.generation, g + 1);
      await this.end(j, 'succeeded', '', volume);
    });
  }

  /**
   * A fence: take the lease with a higher epoch, then compare-and-set a
   * fenced record and a bumped generation (g+2) on every node. Idempotent: a
   * node already fenced by this job accepts the same CAS again.
   */
  async fence(j: JobRecord, report: ReconReport): Promise<void> {
    await this.volumes.exclusive(j.volume, async (e) => {
      const { volume } = e;
      const g = j.expectedGeneration;
      volume.epoch = nextCounter(volume.epoch, `volume ${volume.name}'s lease epoch`);
      await this.volumes.saveVolume(volume);
      const legality = report.verdict === 'not_started' ? 'LEGAL' : 'DIRTY';
      const set = this.peers.node.setVolumeState!;
      for (const n of report.nodes) {
        if (n.chunks === 0) continue;
        // Against what reconnaissance saw there: g (interrupted, not started), g+1 (a resize's partial
        // commit) or g+2 (already fenced by this job: the same CAS is accepted again).
        await set(n.controlAddress, {
          volumeId: volume.id, epoch: volume.epoch, expectedGeneration: n.generation >= g && n.generation <= g + 2 ? n.generation : g, generation: g + 2, legality,
          jobId: j.id, jobKind: 'fence', jobOutcome: 'fenced',
        });
      }
      volume.generation = Math.max(volume.generation, g + 2);
      await this.end(j, 'fenced', `${report.explanation}: fenced under epoch ${volume.epoch}, generation ${g + 2}${legality === 'DIRTY' ? ', the volume is DIRTY' : ''}`, volume);
    });
  }
}

function sortKeys(o: Record<string, string>): Array<[string, string]> {
  return Object.entries(o).sort(([a], [b]) => a.localeCompare(b));
}
