import { nextCounter } from '../../shared/counters.js';
import { ConflictError, InvalidArgumentError, StaleGenerationError, VskyError, errorMessage } from '../../shared/errors.js';
import { crashPoint } from '../../shared/fault-points.js';
import { moduleLogger } from '../../shared/logger.js';
import { formatSize } from '../../shared/units.js';
import type { PeerClients } from '../node-clients.js';
import type { Registry } from '../registry.js';
import type { ManagerStore } from '../store.js';
import type { VolumeRecord } from '../types.js';
import type { VolumeEntry, Volumes } from '../volumes.js';
import { dataProtocolIo, type ChunkIo } from './data-path.js';
import { chainEmptyAt, chainOf, copySegment } from './flatten-copy.js';
import { casVolume, type VolumeStateCas } from './node-cas.js';
import type { Recon } from './recon.js';
import { putJob, type JobRecord } from './records.js';

// Flatten as a storage job (docs/snapshots.md "Flatten", docs/jobs.md): the
// volume copies what it still reads from its backing chain into its own
// chunks, a segment at a time, then drops the backing. Who copies depends on
// the volume, looked at again before every segment:
//
//  - ATTACHED (to an up head): its holder, under the copy-up region locks
//    (head RPC FlattenVolume with first_segment/segment_count), while its I/O
//    goes on; the job works under the holder's epoch (no lease taken, attach
//    and fail-over stay allowed: a new holder simply gets the next segments);
//  - DETACHED: the manager (flatten-copy.ts), under the job's own lease: a new
//    epoch, persisted, then a compare-and-set {generation g, LEGAL, this job
//    running} on every node (attach is refused while the job holds it). A
//    STALE_EPOCH reply is terminal: the job ends fenced.
//
// A segment that fails (a head or node down, a map that moved) is retried
// every RETRY_MS, `waiting` saying why, for up to RETRY_LIMIT_MS without
// progress. Progress (done: bytes of the volume examined, copied: bytes
// written) is persisted at most every PERSIST_MS; a manager that restarts
// resumes the job from the last persisted segment (regions already copied are
// skipped: they are written). After a detached copy, a last pass, once no
// resync runs on the volume, copies any region an in-sync replica still
// lacks. The end: CAS {g+1, LEGAL, succeeded} on every node under the
// current epoch, then one batch drops the backing and records g+1 and the
// job; an attached volume is attached again to its holder with its plain map
// (a newer epoch). The content never changes, so the volume is never DIRTY.

const log = moduleLogger('manager.jobs.flatten');
const PERSIST_MS = 1000;
const RETRY_MS = 1000;
const RETRY_LIMIT_MS = 10 * 60_000;
const HEAD_SEGMENT_TIMEOUT_MS = 30 * 60_000;
const RESYNC_WAIT_MS = 5 * 60_000;

export interface FlattenHooks {
  /** Gives the thin volume chunks for segment s now (ThinSegments.allocateFor). */
  allocate(volume: string, segment: number): Promise<void>;
  /**
   * Pauses the attached volume on its holder (QuiesceVolume, as for a snapshot:
   * manager/snapshot-attached.ts); the function returned attaches it again with
   * its new map under a newer epoch (committed) or resumes it as it was.
   */
  quiesce(v: VolumeRecord): Promise<(committed: boolean) => Promise<void>>;
  /** The volume's lineage changed (its note on the storage nodes). */
  noted?(volumeId: number): Promise<void>;
  /** Resyncs or drains queued or running on the volume. */
  resyncsOf?(volumeId: number): number;
}

/** What the runner lends flatten jobs. */
export interface FlattenHost {
  store: ManagerStore;
  recon: Recon;
  now(): number;
  /** Throws when the job was aborted or the manager stops. */
  checkAbort(j: JobRecord): void;
  end(j: JobRecord, state: JobRecord['state'], error: string): Promise<void>;
  /** The job's volume is free again (its success was recorded here). */
  release(id: string): void;
  mapChanged?(volumeId: number): void;
}

export class FlattenJobs {
  hooks?: FlattenHooks;
  /** Overrides the worker's chunk I/O (tests). */
  io?: () => ChunkIo;
  private readonly persisted = new Map<string, number>();

  constructor(
    private readonly host: FlattenHost,
    private readonly registry: Registry,
    private readonly volumes: Volumes,
    private readonly peers: PeerClients,
  ) {}

  /** Checks a flatten request before anything is recorded. */
  prepare(name: string, args: Record<string, string>): void {
    for (const k of Object.keys(args)) if (k !== 'throttle_mibps') throw new InvalidArgumentError(`flatten: unknown argument "${k}" (use throttle_mibps)`);
    const throttle = Number(args.throttle_mibps ?? 0);
    if (!Number.isInteger(throttle) || throttle < 0 || throttle > 1_000_000) throw new InvalidArgumentError(`flatten: throttle_mibps must be a whole number of MiB/s (0: unthrottled), not "${args.throttle_mibps}"`);
    const v = this.volumes.entry(name).volume;
    if (v.kind === 'snapshot') throw new InvalidArgumentError(`${name} is a snapshot: snapshots are not flattened (flatten the volumes that read from it); nothing changed`, { volume: name });
    if (v.backing === undefined) throw new InvalidArgumentError(`volume ${name} has no backing: it holds all its data already; nothing to flatten; nothing changed`, { volume: name });
    if (v.standbyHead) throw new ConflictError(`volume ${name} is being migrated (standby head attached): finish or cancel the migration first; nothing changed`, { volume: name });
    if (!this.hooks) throw new ConflictError('this manager cannot run flatten jobs');
  }

  /** The worker: every segment, then the end. Resumes from j.done (a restarted manager). */
  async run(j: JobRecord): Promise<void> {
    const io = (this.io ?? dataProtocolIo)();
    const w: Worker = { leased: false, detached: false, since: this.host.now() };
    try {
      const e = this.entry(j);
      const g = j.expectedGeneration;
      if (e.volume.generation !== g) {
        throw new StaleGenerationError(`generation mismatch: volume ${e.volume.name} is at generation ${e.volume.generation}, the job expected ${g}; nothing was touched`);
      }
      if (e.volume.backing === undefined) throw new InvalidArgumentError(`volume ${e.volume.name} has no backing any more; nothing to flatten`);
      const cs = e.volume.chunkSize;
      j.total = e.volume.size;
      j.copied ??= 0;
      if (j.state === 'pending') {
        j.state = 'running';
        j.startedMs = this.host.now();
        await putJob(this.host.store, j);
      }
      const first = Math.min(e.volume.segmentCount, Math.floor(j.done / cs));
      if (first > 0) log.info({ job: j.id, volume: j.volume, segment: first }, 'flatten resumes where it was');
      const rate = Number(j.args.throttle_mibps ?? 0) * 1024 * 1024;
      const began = this.host.now();
      let copiedHere = 0;
      for (let s = first; s < e.volume.segmentCount; s++) {
        const n = await this.segment(j, w, io, s);
        j.copied += n;
        copiedHere += n;
        j.done = Math.min(j.total, (s + 1) * cs);
        j.updatedMs = this.host.now();
        await this.persist(j);
        crashPoint('manager.flatten.segment');
        // --throttle-mibps: the bytes copied so far may not have taken less than bytes / rate.
        const ahead = rate > 0 ? (copiedHere * 1000) / rate - (this.host.now() - began) : 0;
        if (ahead > 0) await new Promise((r) => setTimeout(r, Math.min(ahead, 60_000)));
      }
      if (w.detached && !this.entry(j).volume.attachedHead) await this.lastPass(j, w, io);
      await this.finish(j, w);
    } finally {
      this.persisted.delete(j.id);
      await io.close().catch(() => undefined);
    }
  }

  private entry(j: JobRecord): VolumeEntry {
    const e = this.volumes.byVolumeId(j.volumeId);
    if (!e) throw new InvalidArgumentError(`volume ${j.volume} (id ${j.volumeId}) no longer exists`);
    return e;
  }

  /** One segment, by whoever holds the volume now; retried until it works (or RETRY_LIMIT_MS without progress). */
  private async segment(j: JobRecord, w: Worker, io: ChunkIo, s: number): Promise<number> {
    for (;;) {
      this.host.checkAbort(j);
      const v = this.entry(j).volume;
      try {
        const copied = v.attachedHead ? await this.onHolder(j, w, v, s) : await this.byManager(j, w, io, s);
        w.since = this.host.now();
        if (j.waiting) {
          delete j.waiting;
          await putJob(this.host.store, j);
        }
        return copied;
      } catch (err) {
        if (j.state === 'fenced' || err instanceof StaleGenerationError) throw err;
        if (err instanceof VskyError && err.code === 'ESTALE_EPOCH' && !v.attachedHead && w.leased) {
          await this.host.end(j, 'fenced', `fenced: a storage node refused the job's epoch ${j.epoch} (${errorMessage(err)}); volume ${j.volume} keeps its backing, what was copied is its own: run vsky volume flatten ${j.volume} again`);
          throw err;
        }
        if (this.host.now() - w.since > RETRY_LIMIT_MS) throw err;
        const why = `segment ${s}: ${errorMessage(err)}; retrying every ${RETRY_MS / 1000} s`;
        if (why !== j.waiting) {
          log.warn({ job: j.id, volume: j.volume, segment: s, err: errorMessage(err) }, 'flatten: segment failed; retrying');
          j.waiting = why;
          await putJob(this.host.store, j);
        }
        await new Promise((r) => setTimeout(r, RETRY_MS));
      }
    }
  }

  /** The holder head copies segment s under its copy-up region locks. */
  private async onHolder(j: JobRecord, w: Worker, v: VolumeRecord, s: number): Promise<number> {
    const head = this.registry.head(v.attachedHead ?? '');
    if (!head || head.state !== 'active') throw new ConflictError(`volume ${v.name}'s head ${head?.name ?? v.attachedHead} is not up: waiting for it (or for the volume to be attached elsewhere or detached)`);
    const api = this.peers.head.flattenVolume;
    if (!api) throw new ConflictError('this manager cannot ask heads to flatten');
    if (!j.online || j.epoch !== v.epoch) {
      j.online = true;
      j.epoch = v.epoch;
      j.host = head.id;
      w.leased = false;
      await putJob(this.host.store, j);
    }
    return api(head.controlAddress, { name: v.name, epoch: v.epoch, resume: false, firstSegment: s, segmentCount: 1 }, HEAD_SEGMENT_TIMEOUT_MS);
  }

  /** The manager copies segment s of the detached volume under the job's lease. */
  private async byManager(j: JobRecord, w: Worker, io: ChunkIo, s: number): Promise<number> {
    if (!w.leased) await this.takeLease(j, w);
    if (!w.leased) throw new ConflictError(`volume ${j.volume} was attached meanwhile: its head copies from now on`);
    w.detached = true;
    const hooks = this.hooks!;
    const done = await copySegment({ volumes: this.volumes, registry: this.registry, peers: this.peers, io, allocate: (name, seg) => hooks.allocate(name, seg) }, j.volume, s, j.epoch);
    return done.bytes;
  }

  /** The job's lease on the detached volume: a new epoch, durable, then CAS g + LEGAL + running on every node. */
  private async takeLease(j: JobRecord, w: Worker): Promise<void> {
    await this.volumes.exclusive(j.volume, async (e) => {
      const v = e.volume;
      if (v.attachedHead || v.standbyHead) return;
      v.epoch = nextCounter(v.epoch, `volume ${v.name}'s lease epoch`);
      j.epoch = v.epoch;
      j.online = false;
      delete j.host;
      await this.host.store.write(this.host.store.batch().putVolume(v).putJob(j));
      w.leased = true;
      try {
        await casVolume(this.peers, this.registry, e.map, v.id, this.stamp(j, j.expectedGeneration, 'running', true));
      } catch (err) {
        // A manager that stopped after the final CAS and before recording it: the nodes say succeeded; finish it.
        if (!(err instanceof StaleGenerationError) || (await this.host.recon.investigate(j.volume, j)).verdict !== 'succeeded') throw err;
        log.warn({ job: j.id, volume: v.name }, 'flatten: its final compare-and-set had applied before the manager stopped; finishing');
      }
    });
  }

  private stamp(j: JobRecord, generation: number, outcome: string, raiseLagging = false): VolumeStateCas {
    return {
      epoch: j.epoch, expectedGeneration: j.expectedGeneration, generation, legality: 'LEGAL', jobId: j.id, jobKind: 'flatten', jobOutcome: outcome,
      ...(raiseLagging ? { raiseLagging: true } : {}),
    };
  }

  /** Detached: once no resync runs on the volume, copies any region an in-sync replica still lacks (a node that missed writes). */
  private async lastPass(j: JobRecord, w: Worker, io: ChunkIo): Promise<void> {
    const until = this.host.now() + RESYNC_WAIT_MS;
    for (;;) {
      this.host.checkAbort(j);
      const e = this.entry(j);
      const busy = (this.hooks?.resyncsOf?.(e.volume.id) ?? 0) + (e.map.moves?.length ?? 0) + (e.map.resyncing?.length ?? 0);
      if (busy === 0 || this.host.now() > until) break;
      j.waiting = 'waiting for the resyncs of the volume to end before the last pass (vsky resync list)';
      await this.persist(j);
      await new Promise((r) => setTimeout(r, RETRY_MS));
    }
    const e = this.entry(j);
    const chain = chainOf(this.volumes, e);
    let extra = 0;
    for (let s = 0; s < e.volume.segmentCount; s++) {
      if (chainEmptyAt(chain, s) || this.entry(j).volume.attachedHead) continue;
      extra += await this.segment(j, w, io, s);
    }
    j.copied = (j.copied ?? 0) + extra;
    delete j.waiting;
    if (extra > 0) log.warn({ job: j.id, volume: j.volume, bytes: extra }, 'flatten: the last pass copied regions a replica lacked');
  }

  /** CAS g+1 on every node, then one batch: no backing, g+1, the job succeeded; an attached volume gets its plain map. */
  private async finish(j: JobRecord, w: Worker): Promise<void> {
    this.host.checkAbort(j);
    const g = j.expectedGeneration;
    await this.volumes.exclusive(j.volume, async (e) => {
      const v = e.volume;
      if (v.generation !== g) throw new StaleGenerationError(`volume ${v.name} moved to generation ${v.generation} during its flatten; run it again`);
      // Attached: its I/O pauses (writes in flight finish) before the map without backing and a newer epoch replace the old ones.
      const resume = v.attachedHead ? await this.hooks!.quiesce(v) : undefined;
      try {
        await this.commit(j, w, e);
      } catch (err) {
        await resume?.(false);
        throw err;
      }
      await resume?.(true).catch((err: unknown) => {
        log.warn({ job: j.id, volume: v.name, err: errorMessage(err) }, 'flatten: attaching the volume again with its plain map failed (it is detached; attach it again)');
      });
      log.info({ job: j.id, volume: v.name, copied: j.copied, ms: j.endedMs - j.startedMs, online: Boolean(resume) }, 'flatten job succeeded: the backing is dropped');
    });
    await this.hooks?.noted?.(j.volumeId).catch(() => undefined);
    this.host.mapChanged?.(j.volumeId);
  }

  /** The final CAS and the batch (the volume held, its I/O paused if attached). */
  private async commit(j: JobRecord, w: Worker, e: VolumeEntry): Promise<void> {
    const v = e.volume;
    const g = j.expectedGeneration;
    if (v.attachedHead) {
      j.epoch = v.epoch;
    } else if (!w.leased) {
      // Detached since its last segment (or never copied by the manager): the lease first.
      v.epoch = nextCounter(v.epoch, `volume ${v.name}'s lease epoch`);
      j.epoch = v.epoch;
      await this.host.store.write(this.host.store.batch().putVolume(v).putJob(j));
    }
    await casVolume(this.peers, this.registry, e.map, v.id, this.stamp(j, g + 1, 'succeeded', !v.attachedHead && !w.leased));
    const next: VolumeRecord = { ...v, generation: g + 1 };
    delete next.backing;
    j.state = 'succeeded';
    j.endedMs = this.host.now();
    j.done = j.total;
    delete j.waiting;
    const batch = this.host.store.batch().putVolume(next).putJob(j)
      .event('job.succeeded', `volume:${v.name}`, `flatten job ${j.id} succeeded: ${formatSize(j.copied ?? 0)} copied; ${v.name} no longer reads from a snapshot; generation ${g} -> ${g + 1}`,
        { job: j.id, kind: 'flatten', generation: g + 1, epoch: j.epoch, copied: j.copied ?? 0 });
    await this.host.store.write(batch);
    this.volumes.install(next, e.map);
    this.host.release(j.id);
  }

  private async persist(j: JobRecord): Promise<void> {
    const now = this.host.now();
    if (now - (this.persisted.get(j.id) ?? 0) < PERSIST_MS) return;
    this.persisted.set(j.id, now);
    await putJob(this.host.store, j);
  }
}

interface Worker {
  /** The manager holds the job's lease on the detached volume (taken in this process). */
  leased: boolean;
  /** Some segment was copied by the manager (a last pass follows). */
  detached: boolean;
  /** The last progress (RETRY_LIMIT_MS counts from it). */
  since: number;
}
