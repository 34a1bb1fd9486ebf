import { InvalidArgumentError, errorMessage } from '../../shared/errors.js';
import { moduleLogger } from '../../shared/logger.js';
import { segmentReplicas } from '../chunk-map.js';
import { DrainPlanner } from './drains.js';
import type { ChunkFreer } from '../gc.js';
import type { MapPusher } from '../map-pusher.js';
import { mapLimit, type PeerClients } from '../node-clients.js';
import type { PlacementModel } from '../placement.js';
import type { Registry } from '../registry.js';
import { ResyncBook } from './book.js';
import { DEFAULT_RESYNC_OPTIONS, type ResyncContext, type ResyncOptions, type Runtime } from './context.js';
import { ResyncDispatcher } from './dispatch.js';
import { JobDiskClaims } from './job-disks.js';
import { ResyncOutcomes } from './outcomes.js';
import { SparePlanner } from './spares.js';
import type { ManagerStore, StoreBatch, StoreSnapshot } from '../store.js';
import type { ResyncRecord } from '../types.js';
import type { Volumes } from '../volumes.js';

export { DEFAULT_RESYNC_OPTIONS, type ResyncOptions } from './context.js';

// Resyncs: rebuilding replicas that a spare replaced (manager/resync/spares.ts) and
// copying replicas off disks being drained (manager/resync/drains.ts).
//
// One pass at a time, whenever something changes (a failure, a finished or
// failed copy, a head or node coming or going, the periodic tick):
//  1. mend and plan drains, then plan spares for stale replicas;
//  2. review running copies and start queued ones (resync-dispatch.ts);
//  3. learn, in the background, how many bytes new ones will copy.
// Executors report progress here; how copies end is resync-outcomes.ts. The
// executor's task id is `${id}.${attempt}`: a report naming an older attempt
// (or an unknown id) is answered cancel.

const log = moduleLogger('manager.resync');

/** Progress is persisted at most this often per resync (finish and errors at once). */
const PERSIST_INTERVAL_MS = 1000;

export interface ResyncProgressInput {
  resyncId: string;
  regionsDone: number;
  regionsTotal: number;
  bytesCopied: number;
  finished: boolean;
  error: string;
}

export class Resyncs implements ResyncContext {
  readonly book = new ResyncBook();
  readonly planner: SparePlanner;
  readonly drains: DrainPlanner;
  private readonly runtime = new Map<string, Runtime>();
  private address = '';
  private started = false;
  private passing: Promise<void> | undefined;
  private again = false;
  private readonly reasons = new Set<string>();
  private readonly background = new Set<Promise<unknown>>();
  private readonly dispatcher: ResyncDispatcher;
  private readonly outcomes: ResyncOutcomes;
  /** Copy jobs' disks, counted against the per-disk limit (job-disks.ts). */
  readonly jobDisks: JobDiskClaims;

  constructor(
    readonly store: ManagerStore,
    model: PlacementModel,
    readonly registry: Registry,
    readonly volumes: Volumes,
    readonly peers: PeerClients,
    readonly freer: ChunkFreer,
    readonly pusher: MapPusher,
    readonly opts: ResyncOptions = DEFAULT_RESYNC_OPTIONS,
  ) {
    this.jobDisks = new JobDiskClaims(() => this.opts.limits, () => this.diskLoad(), (why) => this.wake(why));
    this.dispatcher = new ResyncDispatcher(this);
    this.outcomes = new ResyncOutcomes(this, this.dispatcher);
    this.planner = new SparePlanner(this, model, opts.spareDisks);
    this.drains = new DrainPlanner(this, model, (rec, entry, why) => this.outcomes.dropMove(rec, entry, why));
  }

  load(snap: StoreSnapshot): void {
    const kept = snap.resyncs.filter((r) => {
      if (this.volumes.byVolumeId(r.volumeId)) return true;
      log.warn({ resync: r.id, volumeId: r.volumeId }, 'resync record of an unknown volume; ignored');
      return false;
    });
    this.book.load(kept, snap.nextResyncId);
    for (const r of kept) this.rt(r).redispatch = r.state === 'running';
  }

  /** Starts work (the daemon once it listens at `managerAddress`): resumes running resyncs, plans the rest. */
  start(managerAddress: string): void {
    this.address = managerAddress;
    this.started = true;
    const running = this.book.all().filter((r) => r.state === 'running').length;
    if (this.book.size > 0) log.info({ resyncs: this.book.size, running }, 'resuming resyncs');
    this.pusher.pushStale();
    this.wake('start');
  }

  /** Runs a pass soon (coalesced with any other wake). */
  wake(reason: string): void {
    this.reasons.add(reason);
    if (!this.started) return;
    if (this.passing) {
      this.again = true;
      return;
    }
    this.passing = new Promise<void>((resolve) => setImmediate(resolve)).then(() => this.loop()).finally(() => {
      this.passing = undefined;
      // A wake between the loop's last check and here would be lost otherwise.
      if (this.again) {
        this.again = false;
        this.wake('more changes');
      }
    });
  }

  /** Resolves when no pass or background work (frees, size estimates) is running. */
  async idle(): Promise<void> {
    while (this.passing || this.background.size > 0) {
      if (this.passing) await this.passing;
      else await Promise.all([...this.background]);
    }
  }

  isIdle(): boolean {
    return !this.passing && this.background.size === 0;
  }

  /** No new passes (closing); one running finishes. */
  stop(): void {
    this.started = false;
  }

  /** The periodic check (daemon timer): stalls, retries, heads to update. */
  tick(): void {
    this.pusher.pushStale();
    if (this.book.size > 0 || this.hasStale() || this.registry.listDisks().some((d) => d.draining)) this.wake('tick');
  }

  /** ReportResyncProgress from an executor. */
  async progress(req: ResyncProgressInput): Promise<{ cancel: boolean }> {
    if (!req.resyncId) throw new InvalidArgumentError('ReportResyncProgress needs a resync_id');
    if (req.regionsTotal > 0 && req.regionsDone > req.regionsTotal) {
      throw new InvalidArgumentError(`resync ${req.resyncId}: regions_done ${req.regionsDone} exceeds regions_total ${req.regionsTotal}`);
    }
    const dot = req.resyncId.lastIndexOf('.');
    const rec = this.book.get(dot > 0 ? req.resyncId.slice(0, dot) : req.resyncId);
    const entry = rec && this.volumes.byVolumeId(rec.volumeId);
    if (!rec || !entry || rec.state !== 'running' || `${rec.id}.${rec.attempt}` !== req.resyncId) {
      log.info({ resyncId: req.resyncId, current: rec ? `${rec.id}.${rec.attempt} (${rec.state})` : 'none' },
        'progress for an unknown or superseded resync: told to cancel');
      return { cancel: true };
    }
    const rt = this.rt(rec);
    const now = this.registry.now();
    rt.lastProgressMs = now;
    rt.stalls = 0;
    if (req.bytesCopied > rt.attemptBytes) {
      rec.bytesCopied += req.bytesCopied - rt.attemptBytes;
      rt.attemptBytes = req.bytesCopied;
    }
    if (req.regionsTotal > 0) rec.regionsTotal = req.regionsTotal;
    rec.regionsDone = Math.max(rec.regionsDone, Math.min(req.regionsDone, rec.regionsTotal || req.regionsDone));
    if (req.error) {
      await this.outcomes.copyFailed(rec, entry, req.error);
      return { cancel: false };
    }
    if (req.finished) return { cancel: !(await this.outcomes.finish(rec, entry)) };
    if (now - rt.lastPersistMs >= PERSIST_INTERVAL_MS) {
      rt.lastPersistMs = now;
      await this.store.write(this.store.batch().putResync(rec));
    }
    return { cancel: false };
  }

  /** Frees the volume's chunks on the to-free list that waited for its head to confirm a map (in the background). */
  freeHeld(volumeId: number): void {
    const records = this.freer.list().filter((r) => r.volumeId === volumeId);
    if (records.length > 0) this.track(this.freer.free(records));
  }

  /** Volume delete: its resync records go in the same batch. */
  volumeDeleting(volumeId: number, batch: StoreBatch): void {
    for (const r of this.book.ofVolume(volumeId)) batch.delResync(r.id);
  }

  volumeDeleted(volumeId: number): void {
    for (const r of this.book.ofVolume(volumeId)) {
      this.book.remove(r);
      this.runtime.delete(r.id);
    }
    this.pusher.forget(volumeId);
  }

  /** Disk -> running resyncs using it (target and sources). */
  diskLoad(): Map<string, number> {
    const load = new Map<string, number>();
    for (const r of this.book.all()) {
      if (r.state !== 'running') continue;
      for (const d of [r.target.diskId, ...r.sources]) load.set(d, (load.get(d) ?? 0) + 1);
    }
    return load;
  }

  runtimeOf(id: string): Readonly<Runtime> | undefined {
    return this.runtime.get(id);
  }

  private async loop(): Promise<void> {
    do {
      this.again = false;
      const reasons = [...this.reasons];
      this.reasons.clear();
      try {
        await this.pass();
      } catch (err) {
        log.error({ err: errorMessage(err), reasons }, 'resync pass failed; retried at the next change or tick');
      }
    } while (this.again);
  }

  private async pass(): Promise<void> {
    // Wait for batches issued before the wake (a failure's stale marks).
    await this.store.write(this.store.batch());
    await this.drains.plan();
    await this.planner.plan();
    await this.dispatcher.review();
    await this.dispatcher.dispatchReady();
    this.estimateSizes();
  }

  /**
   * Learns, in the background, how many bytes each new resync will copy (the
   * written regions of a good copy: GetChunkRegions): the scheduler weighs
   * disks' work by it, progress totals use it. Asked once per resync.
   */
  private estimateSizes(): void {
    const todo = this.book.all().filter((r) => !this.rt(r).sized);
    if (todo.length === 0) return;
    for (const r of todo) this.rt(r).sized = true;
    this.track(mapLimit(todo, 8, async (rec) => {
      const entry = this.volumes.byVolumeId(rec.volumeId);
      const src = entry && segmentReplicas(entry.map, rec.segment).find((x) => x.state === 'in_sync' && this.usable(x.diskId));
      const server = src && this.registry.serverOfDisk(src.diskId);
      if (!src || !server) return;
      try {
        const regions = await this.peers.node.getChunkRegions(server.controlAddress, { volumeId: rec.volumeId, segment: rec.segment, slot: src.idSlot });
        let bits = 0;
        for (const byte of regions.written) for (let b = byte; b; b &= b - 1) bits++;
        if (regions.regionSize > 0) this.rt(rec).bytesExpected = bits * regions.regionSize;
      } catch (err) {
        log.debug({ resync: rec.id, err: errorMessage(err) }, 'GetChunkRegions failed; this resync counts as a whole chunk');
      }
    }));
  }

  managerAddress(): string {
    return this.address;
  }

  forget(rec: ResyncRecord): void {
    this.runtime.delete(rec.id);
  }

  track(work: Promise<unknown>): void {
    const p = work.catch(() => undefined).finally(() => this.background.delete(p));
    this.background.add(p);
  }

  usable(diskId: string): boolean {
    return this.registry.disk(diskId)?.state === 'active' && this.registry.serverOfDisk(diskId)?.state === 'active';
  }

  private hasStale(): boolean {
    for (const { map } of this.volumes.entries()) if (map.stale && map.stale.length > 0) return true;
    return false;
  }

  rt(rec: ResyncRecord): Runtime {
    let rt = this.runtime.get(rec.id);
    if (!rt) {
      rt = { lastProgressMs: this.registry.now(), lastPersistMs: 0, stalls: 0, notBefore: 0, attemptBytes: 0, redispatch: false };
      this.runtime.set(rec.id, rt);
    }
    return rt;
  }
}
