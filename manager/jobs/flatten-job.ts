import { nextCounter } from '../../shared/counters.js';
import { ConflictError, InvalidArgumentError, StaleGenerationError, VskyError, errorMessage } from '../../shared/errors.js';
import { crashPoint } from '../../shared/fault-points.js';
import { moduleLogger } from '../../shared/logger.js';
import { formatSize } from '../../shared/units.js';
import type { PeerClients } from '../node-clients.js';
import type { PlacementModel } from '../placement.js';
import type { Registry } from '../registry.js';
import type { ManagerStore } from '../store.js';
import type { VolumeRecord } from '../types.js';
import type { VolumeEntry, Volumes } from '../volumes.js';
import { dataProtocolIo, type ChunkIo } from './data-path.js';
import { copySegment } from './flatten-copy.js';
import { checkMerge, handOver } from './merge.js';
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
//  - DETACHED: the manager (flatten-copy.ts), holding the volume for the rest
//    of the job as a wipe does (volumes.exclusive: attach, snapshots and
//    resyncs of it wait), under the job's own lease: a new epoch, persisted,
//    then a compare-and-set {LEGAL, this job running} on every node. A
//    STALE_EPOCH reply is terminal: the job ends fenced.
//
// A segment that fails (a head or node down, a map that moved) is retried
// every RETRY_MS, `waiting` saying why, for up to RETRY_LIMIT_MS without
// progress; a replica marked stale meanwhile (its node failed) is left out
// and rebuilt by a resync once the job let go of the volume. Progress (done:
// bytes of the volume examined, copied: bytes written) is persisted at most
// every PERSIST_MS; a manager that restarts resumes the job from the last
// persisted segment (regions already copied are skipped: they are written).
// The end: CAS {g+1, LEGAL, succeeded} on every node under the current epoch,
// then one batch drops the backing and records g+1 and the job; an attached
// volume is paused on its holder first (QuiesceVolume, as for a snapshot) and
// attached again with its plain map under a newer epoch. The content never
// changes, so the volume is never DIRTY.

const log = moduleLogger('manager.jobs.flatten');
const PERSIST_MS = 1000;
const RETRY_MS = 1000;
const RETRY_LIMIT_MS = 10 * 60_000;
const HEAD_SEGMENT_TIMEOUT_MS = 30 * 60_000;

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
  /** Deletes a merged snapshot once its origin no longer reads from it (Volumes.delete). */
  deleteVolume(name: string): Promise<void>;
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
    private readonly model: PlacementModel,
  ) {}

  /** Checks a flatten request before anything is recorded. */
  prepare(name: string, args: Record<string, string>): void {
    for (const k of Object.keys(args)) if (k !== 'throttle_mibps' && k !== 'merge') throw new InvalidArgumentError(`flatten: unknown argument "${k}" (use throttle_mibps, merge)`);
    const throttle = Number(args.throttle_mibps ?? 0);
    if (!Number.isInteger(throttle) || throttle < 0 || throttle > 1_000_000) throw new InvalidArgumentError(`flatten: throttle_mibps must be a whole number of MiB/s (0: unthrottled), not "${args.throttle_mibps}"`);
    const v = this.volumes.entry(name).volume;
    if (v.kind === 'snapshot') throw new InvalidArgumentError(`${name} is a snapshot: snapshots are not flattened (flatten the volumes that read from it); nothing changed`, { volume: name });
    if (v.backing === undefined) throw new InvalidArgumentError(`volume ${name} has no backing: it holds all its data already; nothing to flatten; nothing changed`, { volume: name });
    if (v.standbyHead) throw new ConflictError(`volume ${name} is being migrated (standby head attached): finish or cancel the migration first; nothing changed`, { volume: name });
    if (!this.hooks) throw new ConflictError('this manager cannot run flatten jobs');
    if (args.merge !== undefined) checkMerge(this.volumes, name, args.merge);
  }

  /** The worker: every segment, then the end. Resumes from j.done (a restarted manager). */
  async run(j: JobRecord): Promise<void> {
    const io = (this.io ?? dataProtocolIo)();
    const w: Worker = { leased: false, since: this.host.now() };
    try {
      const e = this.entry(j);
      const g = j.expectedGeneration;
      // Map-only changes (a resync ended, a replica marked stale) move the manager's generation on, not the nodes' (docs/jobs.md).
      if (j.state === 'pending' ? e.volume.generation !== g : e.volume.generation < g) {
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
      const pace: Pace = { rate: Number(j.args.throttle_mibps ?? 0) * 1024 * 1024, began: this.host.now(), copied: 0 };
      for (let s = first; ;) {
        if (!this.entry(j).volume.attachedHead) {
          // Detached: the manager copies the rest with the volume held, as a wipe does (attach, resyncs, snapshots wait).
          const done = await this.volumes.exclusive(j.volume, (held) => this.detachedRest(j, w, io, s, held, pace));
          if (done) return await this.merged(j);
          continue; // attached meanwhile: its head copies
        }
        if (s >= e.volume.segmentCount) {
          if (await this.finishAttached(j, w)) return await this.merged(j);
          continue;
        }
        const copied = await this.segment(j, w, io, s);
        if (copied < 0) continue;
        await this.progress(j, s, copied, pace);
        s++;
      }
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
        // Detached while its head was copying: the caller takes the volume and the lease (-1).
        if (!v.attachedHead && !w.leased) return -1;
        const copied = v.attachedHead ? await this.onHolder(j, w, v, s) : await this.byManager(j, io, s);
        w.since = this.host.now();
        if (j.waiting) {
          delete j.waiting;
          await putJob(this.host.store, j);
        }
        return copied;
      } catch (err) {
        if (j.state === 'fenced' || err instanceof StaleGenerationError || !this.volumes.byVolumeId(j.volumeId)) throw err;
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
  private async byManager(j: JobRecord, io: ChunkIo, s: number): Promise<number> {
    const hooks = this.hooks!;
    const done = await copySegment({ volumes: this.volumes, registry: this.registry, peers: this.peers, io, allocate: (name, seg) => hooks.allocate(name, seg) }, j.volume, s, j.epoch);
    return done.bytes;
  }

  /** The job's lease on the detached volume (held by the caller): a new epoch, durable, then CAS LEGAL + this job running on every node. */
  private async takeLease(j: JobRecord, w: Worker, e: VolumeEntry): Promise<void> {
    const v = e.volume;
    v.epoch = nextCounter(v.epoch, `volume ${v.name}'s lease epoch`);
    j.epoch = v.epoch;
    j.online = false;
    delete j.host;
    await this.host.store.write(this.host.store.batch().putVolume(v).putJob(j));
    w.leased = true;
    try {
      await casVolume(this.peers, this.registry, e.map, v.id, this.stamp(j, v.generation, v.generation, 'running'));
    } catch (err) {
      // A manager that stopped after the final CAS and before recording it: the nodes say succeeded; finish it.
      if (!(err instanceof StaleGenerationError) || (await this.host.recon.investigate(j.volume, j)).verdict !== 'succeeded') throw err;
      log.warn({ job: j.id, volume: v.name }, 'flatten: its final compare-and-set had applied before the manager stopped; finishing');
    }
  }

  /** The CAS {expected -> generation, LEGAL, this job}: chunks below `expected` count as at it (the manager's generation also moves on map-only changes). */
  private stamp(j: JobRecord, expected: number, generation: number, outcome: string): VolumeStateCas {
    return { epoch: j.epoch, expectedGeneration: expected, generation, legality: 'LEGAL', jobId: j.id, jobKind: 'flatten', jobOutcome: outcome, raiseLagging: true };
  }

  /** A merge: the snapshot, read by nothing now, is deleted. */
  private async merged(j: JobRecord): Promise<void> {
    const snap = j.args.merge;
    if (snap === undefined || !this.volumes.find(snap)) return;
    await this.hooks!.deleteVolume(snap).catch((err: unknown) => {
      log.error({ job: j.id, snapshot: snap, err: errorMessage(err) }, `merge: the snapshot was merged into ${j.volume} but not deleted: delete it (vsky snapshot delete ${snap})`);
    });
    log.info({ job: j.id, volume: j.volume, snapshot: snap, merged: j.merged?.length ?? 0 }, 'snapshot merged into its origin and deleted');
  }

  /** Runs fn until it works, as segment() does (RETRY_MS apart, `waiting` saying why; RETRY_LIMIT_MS without progress fails). */
  private async retrying<T>(j: JobRecord, w: Worker, what: string, fn: () => Promise<T>): Promise<T> {
    for (;;) {
      this.host.checkAbort(j);
      try {
        const out = await fn();
        w.since = this.host.now();
        return out;
      } catch (err) {
        if (this.host.now() - w.since > RETRY_LIMIT_MS) throw err;
        j.waiting = `${what}: ${errorMessage(err)}; retrying every ${RETRY_MS / 1000} s`;
        await putJob(this.host.store, j);
        await new Promise((r) => setTimeout(r, RETRY_MS));
      }
    }
  }

  /** Progress after segment s: persisted at most every PERSIST_MS; --throttle-mibps paces the copy. */
  private async progress(j: JobRecord, s: number, copied: number, pace: Pace): Promise<void> {
    j.copied = (j.copied ?? 0) + copied;
    pace.copied += copied;
    j.done = Math.min(j.total, (s + 1) * this.entry(j).volume.chunkSize);
    j.updatedMs = this.host.now();
    await this.persist(j);
    crashPoint('manager.flatten.segment');
    const ahead = pace.rate > 0 ? (pace.copied * 1000) / pace.rate - (this.host.now() - pace.began) : 0;
    if (ahead > 0) await new Promise((r) => setTimeout(r, Math.min(ahead, 60_000)));
  }

  /**
   * Detached, the volume held (volumes.exclusive): the job's lease, segments
   * from s, the final CAS and the batch. False: it was attached before we held it.
   */
  private async detachedRest(j: JobRecord, w: Worker, io: ChunkIo, from: number, e: VolumeEntry, pace: Pace): Promise<boolean> {
    if (e.volume.attachedHead || e.volume.standbyHead) return false;
    if (!w.leased) await this.takeLease(j, w, e);
    if (j.args.merge !== undefined) {
      const ctx = { store: this.host.store, model: this.model, registry: this.registry, peers: this.peers, volumes: this.volumes, resyncsOf: this.hooks?.resyncsOf };
      await this.retrying(j, w, 'handing segments back', () => handOver(ctx, j, e));
    }
    for (let s = from; s < e.volume.segmentCount; s++) await this.progress(j, s, await this.segment(j, w, io, s), pace);
    this.host.checkAbort(j);
    await this.commit(j, w, e);
    log.info({ job: j.id, volume: j.volume, copied: j.copied, ms: j.endedMs - j.startedMs }, 'flatten job succeeded (detached, copied by the manager): the backing is dropped');
    await this.hooks?.noted?.(j.volumeId).catch(() => undefined);
    return true;
  }

  /** Attached: CAS g+1 on every node, then one batch (no backing, g+1, the job succeeded); the holder gets its plain map. */
  private async finishAttached(j: JobRecord, w: Worker): Promise<boolean> {
    this.host.checkAbort(j);
    const g = j.expectedGeneration;
    const done = await this.volumes.exclusive(j.volume, async (e) => {
      const v = e.volume;
      if (v.generation < g) throw new StaleGenerationError(`volume ${v.name} is at generation ${v.generation}, below the job's ${g}; run the flatten again`);
      if (!v.attachedHead) return false; // detached at the end: the manager finishes it (the caller)
      // Attached: its I/O pauses (writes in flight finish) before the map without backing and a newer epoch replace the old ones.
      const resume = await this.hooks!.quiesce(v);
      try {
        await this.commit(j, w, e);
      } catch (err) {
        await resume(false);
        throw err;
      }
      await resume(true).catch((err: unknown) => {
        log.warn({ job: j.id, volume: v.name, err: errorMessage(err) }, 'flatten: attaching the volume again with its plain map failed (it is detached; attach it again)');
      });
      log.info({ job: j.id, volume: v.name, copied: j.copied, ms: j.endedMs - j.startedMs, online: true }, 'flatten job succeeded (its head copied): the backing is dropped');
      return true;
    });
    if (!done) return false;
    await this.hooks?.noted?.(j.volumeId).catch(() => undefined);
    this.host.mapChanged?.(j.volumeId);
    return true;
  }

  /** The final CAS and the batch (the volume held, its I/O paused if attached). */
  private async commit(j: JobRecord, w: Worker, e: VolumeEntry): Promise<void> {
    const v = e.volume;
    const g = v.generation;
    if (v.attachedHead) {
      j.epoch = v.epoch;
    } else if (!w.leased) {
      // Detached since its last segment (or never copied by the manager): the lease first.
      v.epoch = nextCounter(v.epoch, `volume ${v.name}'s lease epoch`);
      j.epoch = v.epoch;
      await this.host.store.write(this.host.store.batch().putVolume(v).putJob(j));
    }
    await casVolume(this.peers, this.registry, e.map, v.id, this.stamp(j, g, g + 1, 'succeeded'));
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

interface Pace { rate: number; began: number; copied: number }

interface Worker {
  /** The manager holds the job's lease on the detached volume (taken in this process). */
  leased: boolean;
  /** The last progress (RETRY_LIMIT_MS counts from it). */
  since: number;
}
