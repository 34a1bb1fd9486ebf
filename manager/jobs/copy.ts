import {
  AlreadyExistsError, ConflictError, InvalidArgumentError, NotFoundError, VskyError, errorMessage,
} from '../../shared/errors.js';
import { moduleLogger } from '../../shared/logger.js';
import { formatSize } from '../../shared/units.js';
import type { JobReport__Output } from '../../proto/generated/vsky/manager/JobReport.js';
import type { JobReportReply } from '../../proto/generated/vsky/manager/JobReportReply.js';
import type { PeerClients } from '../node-clients.js';
import type { Registry } from '../registry.js';
import { forEachReplica, type ChunkMapRecord, type HeadRecord, type VolumeRecord } from '../types.js';
import { volumeMapView } from '../views.js';
import type { Volumes } from '../volumes.js';
import { writtenSegments, type SegmentsAllocator } from './copy-thin.js';
import { isFinal, putJob, type JobRecord } from './records.js';
import type { Recon, ReconReport } from './recon.js';

// Copy jobs (docs/jobs.md): the manager checks the request, creates the
// destination with --create, picks the host (a head agent: it has the data
// path), and once the runner took the job's lease on the destination and
// compare-and-set it DIRTY at g, hands the job to the host (RunJob). From
// then on the host copies, flushes and writes the final CAS; here:
//  - the job's lease: renewed by the host's progress reports (ReportJob) and
//    by its heartbeats naming the job; silent for the lease TTL (the same TTL
//    as volume leases, --lease-ttl), the job is decided from storage
//    (reconnaissance, recon.ts): succeeded, or fenced (a higher epoch and a
//    fenced record at g+2), so the lost host's late writes fail the epoch
//    check and its late final CAS the epoch and generation checks;
//  - progress: kept in memory on every report, persisted at most every
//    PERSIST_MS (job show/watch computes the rate and ETA from it);
//  - the host's end: succeeded is verified against the nodes (reconnaissance)
//    before the job and the destination's generation g+1 are recorded;
//    failed and aborted leave the destination DIRTY at g.

const log = moduleLogger('manager.jobs.copy');
const PERSIST_MS = 1000;
const CHECK_MS = 200;
/** A copy job waiting for disks at their limit checks again this often. */
const DISK_WAIT_MS = 250;

/** What the runner lends the copy jobs. */
export interface CopyJobsHost {
  jobs: ReadonlyMap<string, JobRecord>;
  /** Volume id -> the job running on it. */
  active: Map<number, string>;
  end(j: JobRecord, state: JobRecord['state'], error?: string): Promise<void>;
  settle(j: JobRecord, report: ReconReport): Promise<void>;
  recon: Recon;
  store: Parameters<typeof putJob>[0];
  now(): number;
}

/** The resync scheduler's per-disk limit, as copy jobs see it (manager/resync/job-disks.ts). */
export interface DiskClaims {
  /** Claims the disks unless one is at its limit; returns those at their limit (nothing claimed then). */
  tryClaim(jobId: string, disks: readonly string[]): string[];
  release(jobId: string): void;
}

export class CopyJobs {
  /** Per-disk limits shared with resyncs (manager/core.ts sets it). */
  disks?: DiskClaims;
  /** Gives a thin destination its chunks before the job (ThinSegments.allocateFor); absent: thin destinations are refused. */
  allocateSegments?: SegmentsAllocator;
  /** Job id -> when its lease was last renewed (this manager's clock). */
  private readonly renewed = new Map<string, number>();
  private readonly persisted = new Map<string, number>();
  /** Jobs being decided (a report's end, or a lost host's reconnaissance): one at a time. */
  private readonly deciding = new Set<string>();
  private timer: NodeJS.Timeout | undefined;
  private readonly pending = new Set<Promise<void>>();

  constructor(
    private readonly host: CopyJobsHost,
    private readonly registry: Registry,
    private readonly volumes: Volumes,
    private readonly peers: PeerClients,
  ) {}

  /** Checks a copy request before anything is recorded; creates the destination with create=true. Returns the host's id. */
  async prepare(dstName: string, args: Record<string, string>): Promise<string> {
    const srcName = args.source ?? '';
    if (!srcName) throw new InvalidArgumentError('copy: name the source volume (args.source; vsky volume copy SRC DST)');
    for (const k of Object.keys(args)) {
      if (!['source', 'create', 'thick', 'host', 'throttle_mibps'].includes(k)) throw new InvalidArgumentError(`copy: unknown argument "${k}" (use source, create, thick, host, throttle_mibps)`);
    }
    for (const k of ['create', 'thick']) {
      if (args[k] !== undefined && args[k] !== 'true' && args[k] !== 'false') throw new InvalidArgumentError(`copy: ${k} must be "true" or "false", not "${args[k]}"`);
    }
    const throttle = Number(args.throttle_mibps ?? 0);
    if (!Number.isInteger(throttle) || throttle < 0 || throttle > 1_000_000) throw new InvalidArgumentError(`copy: throttle_mibps must be a whole number of MiB/s (0: unthrottled), not "${args.throttle_mibps}"`);
    if (srcName === dstName) throw new InvalidArgumentError(`copy: the source and the destination are the same volume (${srcName}); name another destination`);
    const src = this.volumes.find(srcName)?.volume;
    if (!src) throw new NotFoundError(`copy: no source volume "${srcName}": see vsky volume list`, { volume: srcName });
    this.checkDetached(src, 'source');
    this.checkFree(src);
    const host = this.pickHost(args.host ?? '');
    const create = args.create === 'true';
    const existing = this.volumes.find(dstName)?.volume;
    if (create && existing) throw new AlreadyExistsError(`copy: destination ${dstName} already exists: drop --create to copy into it (its content is replaced), or name a new volume`, { volume: dstName });
    if (!create && !existing) throw new NotFoundError(`copy: no destination volume "${dstName}": create it with --create (like ${srcName}), or name an existing one`, { volume: dstName });
    if (args.thick === 'true' && !create) throw new InvalidArgumentError('copy: --thick only applies with --create (an existing destination keeps its provisioning)');
    const thin = existing ? existing.thin === true : args.thick !== 'true';
    const allocate = this.allocateSegments;
    if (thin && allocate === undefined) throw new InvalidArgumentError(`copy: this manager cannot copy into a thin destination (${dstName}); use --create --thick; nothing changed`, { volume: dstName });
    if (existing) {
      this.checkShape(src, existing);
      this.checkDetached(existing, 'destination');
      this.checkFree(existing);
    } else {
      await this.volumes.create({ name: dstName, size: src.size, replicas: src.replicas, spreadLabel: src.spreadLabel, thin });
      log.info({ source: srcName, destination: dstName, size: src.size, replicas: src.replicas, thin }, 'copy: destination created like the source');
    }
    if (thin) {
      // The job's head holds no attachment, so it cannot ask for chunks: the segments it will write get them now.
      const segments = await writtenSegments(this.volumes.entry(srcName), this.registry, this.peers);
      await allocate!(dstName, segments);
      log.info({ source: srcName, destination: dstName, segments: segments.length }, 'copy: thin destination allocated where the source holds data');
    }
    return host.id;
  }

  private checkShape(src: VolumeRecord, dst: VolumeRecord): void {
    if (dst.size < src.size) throw new InvalidArgumentError(`copy: destination ${dst.name} (${formatSize(dst.size)}) is smaller than source ${src.name} (${formatSize(src.size)}); resize it (vsky volume resize) or use --create with a new name; nothing changed`);
    if (dst.size > src.size) throw new InvalidArgumentError(`copy: destination ${dst.name} (${formatSize(dst.size)}) is larger than source ${src.name} (${formatSize(src.size)}): copies go to a volume of the same size (or --create with a new name); nothing changed`);
    if (dst.chunkSize !== src.chunkSize) throw new InvalidArgumentError(`copy: ${dst.name} and ${src.name} have different chunk sizes; nothing changed`);
  }

  /** Both volumes are detached for now (the head holding one would be writing it). */
  checkDetached(v: VolumeRecord, role: 'source' | 'destination'): void {
    const holder = v.attachedHead || v.standbyHead;
    if (!holder) return;
    const head = this.registry.head(holder)?.name ?? holder;
    const fix = role === 'source' ? `detach ${v.name} first (vsky volume detach ${v.name}; or copy from a snapshot when snapshots exist)` : `detach ${v.name} first (vsky volume detach ${v.name})`;
    throw new ConflictError(`copy: the ${role} ${v.name} is attached to head ${head}: copies run between detached volumes for now; ${fix}; nothing changed`, { volume: v.name });
  }

  private checkFree(v: VolumeRecord): void {
    const busy = this.host.active.get(v.id);
    if (busy !== undefined) throw new ConflictError(`copy: volume ${v.name} already has a job running (${busy}): one job per volume at a time; nothing changed`, { jobId: busy });
  }

  /** The named head (it must be up), or the up head with the fewest running jobs. */
  pickHost(ref: string): HeadRecord {
    const up = (h: HeadRecord) => h.state === 'active' && this.registry.leaseLeftMs(h.id) > 0;
    if (ref) {
      const h = this.registry.resolveHead(ref);
      if (!up(h)) throw new ConflictError(`copy: head ${h.name} is not up (no recent heartbeat): name another with --host`, { head: h.name });
      return h;
    }
    const load = (h: HeadRecord) => [...this.host.jobs.values()].filter((j) => j.host === h.id && !isFinal(j.state)).length;
    const heads = this.registry.listHeads().filter(up).sort((a, b) => load(a) - load(b) || a.name.localeCompare(b.name));
    if (heads.length === 0) throw new ConflictError('copy: no head agent is up to run the job: start vsky head-agent (copies run on a head)');
    return heads[0]!;
  }

  /**
   * Waits, pending, until every disk of the source's and the destination's
   * replicas is below the per-disk limit, and claims them (released when the
   * job ends). `checkAbort` throws when the job was aborted or the manager stops.
   */
  async waitForDisks(j: JobRecord, checkAbort: () => void): Promise<void> {
    if (!this.disks) return;
    const disks = [...diskIdsOf(this.volumes.entry(j.args.source!).map), ...diskIdsOf(this.volumes.entry(j.volume).map)];
    for (;;) {
      checkAbort();
      const full = this.disks.tryClaim(j.id, disks);
      const waiting = full.length === 0 ? '' : `waiting for disk${full.length > 1 ? 's' : ''} ${full.join(', ')}: at the per-disk limit (running resyncs or copies; vsky resync list)`;
      if (waiting !== (j.waiting ?? '')) {
        if (waiting) j.waiting = waiting;
        else delete j.waiting;
        await putJob(this.host.store, j);
        if (waiting) log.info({ job: j.id, disks: full }, 'copy job waits for disks at their per-disk limit');
      }
      if (!waiting) return;
      await new Promise((r) => setTimeout(r, DISK_WAIT_MS));
    }
  }

  /** The job's lease is renewed from now (dispatch; a manager that restarted gives the host a full TTL). */
  watch(j: JobRecord): void {
    this.renewed.set(j.id, this.host.now());
    this.timer ??= setInterval(() => this.check(), CHECK_MS);
    this.timer.unref();
  }

  /** Hands the job to its host. A host that cannot take it: the job is decided from storage at once (fenced). */
  async dispatch(j: JobRecord): Promise<void> {
    const src = this.volumes.entry(j.args.source!);
    const dst = this.volumes.entry(j.volume);
    const head = this.registry.head(j.host ?? '');
    this.watch(j);
    try {
      if (!head) throw new NotFoundError(`head ${j.host} is not registered any more`);
      if (!this.peers.head.runJob) throw new VskyError('EINTERNAL', 'the head client has no RunJob');
      await this.peers.head.runJob(head.controlAddress, {
        jobId: j.id, kind: 'copy', source: volumeMapView(src.volume, src.map, this.registry), sourceEpoch: src.volume.epoch,
        target: volumeMapView(dst.volume, dst.map, this.registry), epoch: j.epoch, expectedGeneration: j.expectedGeneration,
        throttleMibps: Number(j.args.throttle_mibps ?? 0), reportIntervalMs: Math.min(1000, Math.max(100, Math.floor(this.registry.leaseTtlMs / 4))),
      });
      log.info({ job: j.id, host: head.name, source: src.volume.name, destination: dst.volume.name, epoch: j.epoch }, 'copy job handed to its host');
    } catch (err) {
      log.warn({ job: j.id, host: head?.name ?? j.host, err: errorMessage(err) }, 'the host did not take the copy job: deciding it from storage');
      await this.decide(j, `the host ${head?.name ?? j.host} did not take the job (${errorMessage(err)})`);
    }
  }

  /** A heartbeat from `headId` naming the jobs it runs: their leases are renewed. */
  heartbeat(headId: string, jobIds: readonly string[]): void {
    for (const id of jobIds) {
      const j = this.host.jobs.get(id);
      if (j && j.host === headId && this.renewed.has(id)) this.renewed.set(id, this.host.now());
    }
  }

  /** ReportJob: progress (renews the lease), or the host's end. */
  async report(r: JobReport__Output): Promise<JobReportReply> {
    const j = this.host.jobs.get(r.jobId);
    if (!j) return { stop: true, reason: `no job ${r.jobId} here` };
    if (j.host !== r.headId) return { stop: true, reason: `job ${j.id} is not this head's (its host is ${j.host ?? 'the manager'})` };
    if (isFinal(j.state)) return { stop: true, reason: `job ${j.id} already ended (${j.state})` };
    if (this.deciding.has(j.id)) return { stop: true, reason: `job ${j.id} is being decided from storage` };
    if (!this.renewed.has(j.id)) return { stop: true, reason: `job ${j.id} is not running on a host` };
    this.renewed.set(j.id, this.host.now());
    if (Number.isSafeInteger(r.total) && r.total > 0) j.total = r.total;
    if (Number.isSafeInteger(r.done)) j.done = Math.min(r.done, j.total || r.done);
    j.updatedMs = this.host.now();
    if (r.state === 'running') {
      await this.persistProgress(j);
      return j.state === 'aborting' ? { stop: true, reason: 'aborted (vsky job abort)' } : { stop: false, reason: '' };
    }
    const host = this.registry.head(r.headId)?.name ?? r.headId;
    if (r.state === 'succeeded') {
      await this.decide(j, `host ${host} reported success`);
      return { stop: false, reason: '' };
    }
    this.renewed.delete(j.id);
    const g = j.expectedGeneration;
    const how = r.state === 'aborted' ? 'aborted' : 'failed';
    await this.host.end(j, how, `${how} on host ${host}${r.error ? `: ${r.error}` : ''} (volume ${j.volume} stays DIRTY at generation ${g})`);
    return { stop: false, reason: '' };
  }

  private async persistProgress(j: JobRecord): Promise<void> {
    const now = this.host.now();
    if (now - (this.persisted.get(j.id) ?? 0) < PERSIST_MS) return;
    this.persisted.set(j.id, now);
    await putJob(this.host.store, j);
  }

  /** Leases that expired: their jobs are decided from storage. */
  private check(): void {
    const ttl = this.registry.leaseTtlMs;
    const now = this.host.now();
    for (const [id, at] of this.renewed) {
      const j = this.host.jobs.get(id);
      if (!j || isFinal(j.state)) {
        this.renewed.delete(id);
        continue;
      }
      if (now - at <= ttl || this.deciding.has(id)) continue;
      const host = this.registry.head(j.host ?? '')?.name ?? j.host;
      log.warn({ job: id, host, silentMs: now - at, ttlMs: ttl }, 'copy job host silent for the lease TTL: reconnaissance');
      const p = this.decide(j, `host ${host} silent for ${now - at} ms (lease TTL ${ttl} ms)`).finally(() => this.pending.delete(p));
      this.pending.add(p);
    }
    if (this.renewed.size === 0 && this.timer) {
      clearInterval(this.timer);
      this.timer = undefined;
    }
  }

  /** Reconnaissance on the destination, then the runner acts on the verdict (succeeded, or fence). */
  private async decide(j: JobRecord, why: string): Promise<void> {
    if (this.deciding.has(j.id)) return;
    this.deciding.add(j.id);
    const started = this.host.now();
    try {
      for (let attempt = 0; ; attempt++) {
        try {
          const report = await this.host.recon.investigate(j.volume, j);
          report.explanation = `${why}; ${report.explanation}`;
          this.renewed.delete(j.id);
          await this.host.settle(j, report);
          log.info({ job: j.id, verdict: report.verdict, state: j.state, ms: this.host.now() - started }, 'copy job decided from storage');
          return;
        } catch (err) {
          if (attempt >= 10) {
            this.renewed.delete(j.id);
            await this.host.end(j, 'failed', `${why}; reconnaissance failed: ${errorMessage(err)}`);
            return;
          }
          log.warn({ job: j.id, err: errorMessage(err), attempt }, 'reconnaissance of a copy job failed; retrying');
          await new Promise((r) => setTimeout(r, 500));
        }
      }
    } finally {
      this.deciding.delete(j.id);
    }
  }

  async stop(): Promise<void> {
    if (this.timer) clearInterval(this.timer);
    this.timer = undefined;
    await Promise.all([...this.pending]);
  }
}

/** The disks of a volume's replicas a copy reads or writes (stale ones are neither). */
function diskIdsOf(map: ChunkMapRecord): Set<string> {
  const out = new Set<string>();
  forEachReplica(map, (r) => { if (r.state !== 'stale') out.add(r.diskId); });
  return out;
}
