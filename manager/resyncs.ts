import { InvalidArgumentError, errorMessage } from '../shared/errors.js';
import { moduleLogger } from '../shared/logger.js';
import { formatSize } from '../shared/units.js';
import type { ReplicaLocation } from '../proto/generated/vsky/common/ReplicaLocation.js';
import type { ResyncTask } from '../proto/generated/vsky/common/ResyncTask.js';
import { clearMove, identitySlot, moveOf, positionOf, replicaLocation, replicaState, segmentReplicas, setIdentitySlot, setReplicaLocation, setReplicaState } from './chunk-map.js';
import type { ChunkFreer } from './gc.js';
import type { MapPusher } from './map-pusher.js';
import { mapLimit, type PeerClients } from './node-clients.js';
import type { PlacementModel } from './placement.js';
import type { Registry } from './registry.js';
import { ResyncBook } from './resync-book.js';
import { DEFAULT_SCHEDULER_LIMITS, scheduleResyncs, type QueuedResync, type RunningResync, type SchedulerLimits } from './resync-scheduler.js';
import { DrainPlanner } from './drains.js';
import { SparePlanner } from './spares.js';
import type { ManagerStore, StoreBatch, StoreSnapshot } from './store.js';
import { holderEpoch, type ChunkLocation, type ChunkMapRecord, type HeadRecord, type ResyncRecord, type ToFreeRecord } from './types.js';
import type { VolumeEntry, Volumes } from './volumes.js';

// Resyncs: rebuilding replicas that a spare replaced (manager/spares.ts).
//
// One pass at a time, whenever something changes (a failure, a finished or
// failed copy, a head or node coming or going, the periodic tick):
//  1. plan spares for stale replicas;
//  2. review running resyncs: one whose sources went stale, whose executor is
//     no longer the right one, or that made no progress for
//     `progressTimeoutMs` is dispatched again (a stall first to the same
//     executor under the same task id, which it dedupes; then re-planned);
//  3. ask the scheduler (resync-scheduler.ts) which queued ones start, and
//     dispatch them: to the head holding the volume (StartResync, under its
//     lease epoch, once the head confirmed the map with the new replica, so
//     its writes reach the replica before the copy does) or, for a volume no
//     live head holds, to the target's storage node (CopyChunk) under an
//     epoch of its own granted like an attach (persisted first; a later
//     attach gets a higher one, which fences the copy).
// The record is "running" (persisted) before the executor hears of it, so a
// manager restart re-dispatches it from `regionsDone`.
//
// Completion is one batch: the replica in sync, the record gone, the
// generation one higher (rule 5: every storage job moves it forward). The
// executor's task id is `${id}.${attempt}`: a report naming an older attempt
// (or an unknown id) is answered cancel.

const log = moduleLogger('manager.resync');

/** Failed copies onto one target before it is replaced by a new spare. */
const MAX_TARGET_FAILURES = 3;
/** Stalls re-sent to the same executor before the resync is re-planned. */
const MAX_STALLS = 2;
/** Progress is persisted at most this often per resync (finish and errors at once). */
const PERSIST_INTERVAL_MS = 1000;

export interface ResyncOptions {
  /** Bandwidth cap handed to executors (MiB/s per resync, 0 = unthrottled). */
  throttleMibps: number;
  /** A running resync without progress for this long is dispatched again. */
  progressTimeoutMs: number;
  limits: SchedulerLimits;
  /** Hot-spare mode: replacements for failed replicas only on these disks (manager/spares.ts). */
  spareDisks?: readonly string[];
}

export const DEFAULT_RESYNC_OPTIONS: ResyncOptions = { throttleMibps: 0, progressTimeoutMs: 15_000, limits: DEFAULT_SCHEDULER_LIMITS };

/** Per-resync state kept in memory only. */
interface Runtime {
  lastProgressMs: number;
  lastPersistMs: number;
  stalls: number;
  notBefore: number;
  /** Bytes the current attempt has reported (its counter starts at 0). */
  attemptBytes: number;
  /** Loaded as running at start: send to its executor again. */
  redispatch: boolean;
  /** Written bytes of the segment (GetChunkRegions on a source), when known. */
  bytesExpected?: number;
  /** GetChunkRegions was asked (once per resync). */
  sized?: boolean;
  noSourceLogged?: boolean;
}

type Executor = { kind: 'head'; head: HeadRecord; epoch: number } | { kind: 'node' };

export interface ResyncProgressInput {
  resyncId: string;
  regionsDone: number;
  regionsTotal: number;
  bytesCopied: number;
  finished: boolean;
  error: string;
}

export class Resyncs {
  readonly book = new ResyncBook();
  readonly planner: SparePlanner;
  readonly drains: DrainPlanner;
  private readonly runtime = new Map<string, Runtime>();
  private managerAddress = '';
  private started = false;
  private passing: Promise<void> | undefined;
  private again = false;
  private readonly reasons = new Set<string>();
  private readonly background = new Set<Promise<unknown>>();

  constructor(
    private readonly store: ManagerStore,
    model: PlacementModel,
    private readonly registry: Registry,
    private readonly volumes: Volumes,
    private readonly peers: PeerClients,
    private readonly freer: ChunkFreer,
    private readonly pusher: MapPusher,
    private readonly opts: ResyncOptions = DEFAULT_RESYNC_OPTIONS,
  ) {
    this.planner = new SparePlanner(store, model, registry, volumes, peers, freer, this.book, pusher, opts.spareDisks);
    this.planner.track = (work) => this.track(work);
    this.drains = new DrainPlanner(store, model, registry, volumes, peers, freer, this.book, pusher, {
      dropMove: (rec, entry, why) => this.dropMove(rec, entry, why),
      track: (work) => this.track(work),
      forget: (rec) => this.runtime.delete(rec.id),
    });
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
    this.managerAddress = managerAddress;
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
      await this.copyFailed(rec, entry, req.error);
      return { cancel: false };
    }
    if (req.finished) return { cancel: !(await this.finish(rec, entry)) };
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

  /** The executor that a resync of this volume gets now. */
  executorFor(entry: VolumeEntry): Executor {
    const { volume } = entry;
    const head = volume.attachedHead ? this.registry.head(volume.attachedHead) : undefined;
    const epoch = holderEpoch(volume);
    return head && head.state === 'active' && epoch !== undefined ? { kind: 'head', head, epoch } : { kind: 'node' };
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
    await this.review();
    await this.dispatchReady();
    this.estimateSizes();
  }

  private async review(): Promise<void> {
    const now = this.registry.now();
    const again: ResyncRecord[] = [];
    for (const rec of this.book.all()) {
      if (rec.state !== 'running') continue;
      const entry = this.volumes.byVolumeId(rec.volumeId);
      if (!entry) continue;
      const rt = this.rt(rec);
      const problem = this.runningProblem(rec, entry);
      if (problem) {
        await this.requeue(rec, problem);
      } else if (now - rt.lastProgressMs > this.opts.progressTimeoutMs) {
        rt.stalls++;
        if (rt.stalls > MAX_STALLS) {
          await this.requeue(rec, `no progress for ${now - rt.lastProgressMs} ms, ${rt.stalls} times`);
        } else {
          log.warn({ resync: rec.id, executor: rec.executor, silentMs: now - rt.lastProgressMs },
            `resync ${rec.id} made no progress for ${now - rt.lastProgressMs} ms: dispatching it again`);
          again.push(rec);
        }
      } else if (rt.redispatch) {
        again.push(rec);
      }
    }
    await mapLimit(again, 16, (rec) => this.dispatch(rec, rec.sources, true));
  }

  /** Why a running resync must stop (undefined: it may go on). */
  private runningProblem(rec: ResyncRecord, entry: VolumeEntry): string | undefined {
    const { volume, map } = entry;
    const wrongTarget = targetProblem(rec, map);
    if (wrongTarget) return wrongTarget;
    const good = new Map(segmentReplicas(map, rec.segment).filter((x) => x.state === 'in_sync').map((x) => [x.diskId, x]));
    for (const d of rec.sources) {
      if (!good.has(d)) return `source ${d} is no longer in sync`;
      if (!this.usable(d)) return `source ${d} is no longer reachable`;
    }
    const exec = this.executorFor(entry);
    if (rec.executor.startsWith('head:')) {
      if (exec.kind !== 'head' || rec.executor !== `head:${exec.head.id}` || rec.epoch !== exec.epoch) return 'its head no longer holds the volume';
    } else if (exec.kind === 'head') {
      return 'a head holds the volume now';
    } else if (rec.epoch !== volume.epoch) {
      return `its epoch ${rec.epoch} was superseded by ${volume.epoch}`;
    }
    return undefined;
  }

  private async dispatchReady(): Promise<void> {
    const now = this.registry.now();
    const queued: QueuedResync[] = [];
    const running: RunningResync[] = [];
    for (const rec of this.book.all()) {
      if (rec.state === 'running') {
        running.push({ id: rec.id, disks: [rec.target.diskId, ...rec.sources] });
        continue;
      }
      const rt = this.rt(rec);
      const entry = this.volumes.byVolumeId(rec.volumeId);
      if (!entry || rt.notBefore > now || this.volumes.isBusy(rec.volumeId)) continue;
      const { map } = entry;
      if (targetProblem(rec, map) || !this.usable(rec.target.diskId)) continue;
      if (this.executorFor(entry).kind === 'head' && !this.pusher.headIsCurrent(rec.volumeId)) continue; // UpdateMap first
      const sources = segmentReplicas(map, rec.segment).filter((x) => x.state === 'in_sync' && this.usable(x.diskId)).map((x) => x.diskId);
      if (sources.length === 0 && !rt.noSourceLogged) {
        rt.noSourceLogged = true;
        log.error({ resync: rec.id, volume: entry.volume.name, segment: rec.segment },
          `resync ${rec.id} of ${entry.volume.name} seg ${rec.segment} has no in-sync replica on a live disk to copy from; it waits for one to come back`);
      }
      queued.push({ id: rec.id, goodCopies: sources.length, createdMs: rec.createdMs, target: rec.target.diskId, sources, bytes: rt.bytesExpected });
    }
    if (queued.length === 0) return;
    const { start, waiting } = scheduleResyncs(queued, running, this.opts.limits);
    if (start.length > 0 || waiting.noSource > 0) log.debug({ starting: start.length, running: running.length, waiting }, 'resync schedule');
    await mapLimit(start, 16, (s) => this.dispatch(this.book.get(s.id)!, s.sources, false));
  }

  /** Sends a resync to its executor; `same` re-sends the current attempt (the executor dedupes by id). */
  private async dispatch(rec: ResyncRecord, sources: string[], same: boolean): Promise<void> {
    const entry = this.volumes.byVolumeId(rec.volumeId);
    if (!entry) return;
    const { volume, map } = entry;
    const rt = this.rt(rec);
    const exec = this.executorFor(entry);
    const batch = this.store.batch();
    let epoch: number;
    let executor: string;
    let address: string;
    let who: string;
    if (exec.kind === 'head') {
      [epoch, executor, address, who] = [exec.epoch, `head:${exec.head.id}`, exec.head.controlAddress, `head ${exec.head.name}`];
    } else {
      const server = this.registry.serverOfDisk(rec.target.diskId);
      if (!server || server.state !== 'active') return;
      if (volume.resyncEpoch !== volume.epoch) {
        // Granted like an attach, and durable before any node hears of it.
        volume.epoch += 1;
        volume.resyncEpoch = volume.epoch;
        batch.putVolume(volume);
        log.info({ volumeId: volume.id, volume: volume.name, epoch: volume.epoch, fencedHead: volume.attachedHead || undefined },
          `lease epoch ${volume.epoch} of ${volume.name} granted to storage-node resync copies${volume.attachedHead ? ' (its head is gone: this fences it)' : ''}`);
      }
      [epoch, executor, address, who] = [volume.epoch, `node:${server.id}`, server.controlAddress, `node ${server.name}`];
    }
    if (!same) {
      rec.attempt++;
      rec.startedMs = this.registry.now();
      rt.attemptBytes = 0;
    }
    Object.assign(rec, { state: 'running', executor, sources, epoch });
    rt.redispatch = false;
    rt.lastProgressMs = this.registry.now();
    batch.putResync(rec);
    await this.store.write(batch);
    const task: ResyncTask = {
      resyncId: `${rec.id}.${rec.attempt}`, volumeId: volume.id, volumeName: volume.name, segment: rec.segment, chunkSize: volume.chunkSize,
      target: this.location(rec.target, targetIdSlot(rec, map), 'resyncing'),
      sources: sources.map((d) => {
        const x = segmentReplicas(map, rec.segment).find((y) => y.diskId === d && !y.move)!;
        return this.location(x, x.idSlot, 'in_sync');
      }),
      epoch, generation: volume.generation, startRegion: rec.regionsDone, throttleMibps: this.opts.throttleMibps, managerAddress: this.managerAddress,
    };
    const line = `resync ${task.resyncId} ${same ? 're-sent' : 'started'}: sources [${sources.join(', ')}] -> target ${rec.target.diskId}#${rec.target.chunkIndex} (executor ${who})`;
    try {
      if (exec.kind === 'head') await this.peers.head.startResync(address, task);
      else await this.peers.node.copyChunk(address, task);
    } catch (err) {
      rt.notBefore = this.registry.now() + Math.min(30_000, 1000 * 2 ** Math.min(rec.failures, 5));
      log.warn({ resync: rec.id, executor, err: errorMessage(err) }, `${line} failed to dispatch: ${errorMessage(err)}; retried later`);
      if (rec.state === 'running' && rec.executor === executor) await this.requeue(rec, `dispatch failed: ${errorMessage(err)}`, true);
      return;
    }
    log.info({ resync: rec.id, volume: volume.name, segment: rec.segment, slot: rec.slot, epoch, startRegion: rec.regionsDone, goodCopies: task.sources!.length }, line);
  }

  private async requeue(rec: ResyncRecord, why: string, quiet = false): Promise<void> {
    if (!quiet) log.warn({ resync: rec.id, executor: rec.executor }, `resync ${rec.id}.${rec.attempt} stopped: ${why}; queued again`);
    Object.assign(rec, { state: 'queued', executor: '', sources: [], lastError: why });
    await this.store.write(this.store.batch().putResync(rec));
  }

  private async copyFailed(rec: ResyncRecord, entry: VolumeEntry, error: string): Promise<void> {
    rec.failures++;
    const rt = this.rt(rec);
    rt.notBefore = this.registry.now() + Math.min(30_000, 1000 * 2 ** Math.min(rec.failures - 1, 5));
    const batch = this.store.batch();
    const { map } = entry;
    let retarget = false;
    const r = positionOf(map, rec.segment, rec.slot);
    const move = moveOf(map, r);
    if (rec.failures >= MAX_TARGET_FAILURES && move) {
      // A drain target that keeps failing: dropped; the next drain pass picks another.
      await this.dropMove(rec, entry, `${rec.failures} failed copies onto it (${error})`);
      this.wake('drain target dropped');
      return;
    }
    if (rec.failures >= MAX_TARGET_FAILURES) {
      // Sources change at every retry; a target that keeps failing is replaced.
      retarget = setReplicaState(map, r, 'stale');
      if (retarget) batch.putChunkMap(map);
      rt.notBefore = 0;
    }
    log.warn({ resync: rec.id, executor: rec.executor, failures: rec.failures, retarget }, `resync ${rec.id}.${rec.attempt} failed: ${error}${retarget ? `; ${rec.failures} failures onto target ${rec.target.diskId}: a new spare replaces it` : '; retried with a new choice of sources'}`);
    Object.assign(rec, { state: 'queued', executor: '', sources: [], lastError: error });
    batch.putResync(rec);
    await this.store.write(batch);
    if (retarget) this.pusher.changed(rec.volumeId);
    this.wake('resync failed');
  }

  /** Commits a finished copy; false when it no longer counts (its target or a source changed). */
  private async finish(rec: ResyncRecord, entry: VolumeEntry): Promise<boolean> {
    const { volume, map } = entry;
    const r = positionOf(map, rec.segment, rec.slot);
    const problem = this.runningProblem(rec, entry);
    if (problem) {
      await this.requeue(rec, `finished copy refused: ${problem}`);
      this.wake('resync refused');
      return false;
    }
    const batch = this.store.batch();
    const move = moveOf(map, r);
    const toFree: ToFreeRecord[] = [];
    if (move) {
      // The drain's copy becomes the replica; the drained chunk is freed once the holder has the new map.
      toFree.push({ ...replicaLocation(map, r), volumeId: volume.id, segment: rec.segment, idSlot: identitySlot(map, r),
        reason: `drained by resync ${rec.id}`, sinceMs: this.registry.now() });
      setReplicaLocation(map, r, rec.target);
      setIdentitySlot(map, r, move.idSlot);
      clearMove(map, r);
      this.freer.stage(batch, toFree);
    } else {
      setReplicaState(map, r, 'in_sync');
    }
    volume.generation += 1;
    await this.store.write(batch.putChunkMap(map).putVolume(volume).delResync(rec.id));
    this.freer.track(toFree);
    this.book.remove(rec);
    this.runtime.delete(rec.id);
    const now = this.registry.now();
    const secs = ((now - rec.startedMs) / 1000).toFixed(1);
    log.info({ resync: rec.id, volumeId: volume.id, volume: volume.name, segment: rec.segment, slot: rec.slot, generation: volume.generation,
      bytes: rec.bytesCopied, sinceFailureS: Math.round((now - rec.createdMs) / 100) / 10, drained: move ? toFree[0] : undefined },
    `${move ? 'drain copy' : 'resync'} ${rec.id} done in ${secs} s (${formatSize(rec.bytesCopied)}): ${volume.name} seg ${rec.segment} slot ${rec.slot} ` +
      `${move ? `now on ${rec.target.diskId}#${rec.target.chunkIndex}` : 'in sync'}, generation ${volume.generation}`);
    this.pusher.changed(volume.id);
    if (toFree.length > 0) this.track(this.freer.free(toFree));
    this.wake('resync done');
    return true;
  }

  /** Ends a drain copy whose target is not wanted any more: the target leaves the map and is freed, the record goes. */
  async dropMove(rec: ResyncRecord, entry: VolumeEntry, why: string): Promise<void> {
    const { volume, map } = entry;
    const r = positionOf(map, rec.segment, rec.slot);
    const move = moveOf(map, r);
    const batch = this.store.batch().delResync(rec.id);
    const toFree: ToFreeRecord[] = [{ ...rec.target, volumeId: volume.id, segment: rec.segment, idSlot: move?.idSlot ?? targetIdSlot(rec, map),
      reason: `drain copy ${rec.id} dropped`, sinceMs: this.registry.now() }];
    if (move && sameChunk(move, rec.target)) {
      clearMove(map, r);
      batch.putChunkMap(map);
    }
    this.freer.stage(batch, toFree);
    await this.store.write(batch);
    this.freer.track(toFree);
    this.book.remove(rec);
    this.runtime.delete(rec.id);
    log.warn({ resync: rec.id, volume: volume.name, segment: rec.segment, slot: rec.slot, target: rec.target },
      `drain copy ${rec.id} of ${volume.name} seg ${rec.segment} slot ${rec.slot} dropped: ${why}; the drain picks another target`);
    this.pusher.changed(volume.id);
    this.track(this.freer.free(toFree));
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

  private track(work: Promise<unknown>): void {
    const p = work.catch(() => undefined).finally(() => this.background.delete(p));
    this.background.add(p);
  }

  private location(loc: ChunkLocation, idSlot: number, state: string): ReplicaLocation {
    const server = this.registry.serverOfDisk(loc.diskId);
    return {
      slot: idSlot, serverId: server?.id ?? '', dataAddress: server?.dataAddress ?? '', controlAddress: server?.controlAddress ?? '',
      diskId: loc.diskId, chunkIndex: loc.chunkIndex, state,
    };
  }

  private usable(diskId: string): boolean {
    return this.registry.disk(diskId)?.state === 'active' && this.registry.serverOfDisk(diskId)?.state === 'active';
  }

  private hasStale(): boolean {
    for (const { map } of this.volumes.entries()) if (map.stale && map.stale.length > 0) return true;
    return false;
  }

  private rt(rec: ResyncRecord): Runtime {
    let rt = this.runtime.get(rec.id);
    if (!rt) {
      rt = { lastProgressMs: this.registry.now(), lastPersistMs: 0, stalls: 0, notBefore: 0, attemptBytes: 0, redispatch: false };
      this.runtime.set(rec.id, rt);
    }
    return rt;
  }
}

const sameChunk = (a: ChunkLocation, b: ChunkLocation): boolean => a.diskId === b.diskId && a.chunkIndex === b.chunkIndex;

/**
 * Why the map no longer writes to the record's target (undefined: it does).
 * A rebuild's target is its slot's resyncing chunk; a drain's is the slot's
 * drain target, and the drained replica must still be in sync (if it went
 * stale, the drain pass turns the copy into a rebuild of the slot).
 */
export function targetProblem(rec: ResyncRecord, map: ChunkMapRecord): string | undefined {
  const r = positionOf(map, rec.segment, rec.slot);
  const move = moveOf(map, r);
  if (move) {
    if (!sameChunk(move, rec.target)) return 'its drain target changed';
    return replicaState(map, r) === 'in_sync' ? undefined : 'the drained replica is no longer in sync';
  }
  if (replicaState(map, r) !== 'resyncing') return 'its target is no longer a resyncing replica';
  return sameChunk(replicaLocation(map, r), rec.target) ? undefined : 'the slot points elsewhere';
}

/** The slot number the target's node knows it by. */
function targetIdSlot(rec: ResyncRecord, map: ChunkMapRecord): number {
  const r = positionOf(map, rec.segment, rec.slot);
  return moveOf(map, r)?.idSlot ?? identitySlot(map, r);
}
