import { errorMessage } from '../../shared/errors.js';
import { moduleLogger } from '../../shared/logger.js';
import type { ResyncTask } from '../../proto/generated/vsky/common/ResyncTask.js';
import { segmentReplicas, targetIdSlot, targetProblem } from '../chunk-map.js';
import { mapLimit } from '../node-clients.js';
import { taskLocation, type Executor, type ResyncContext } from './context.js';
import { scheduleResyncs, type QueuedResync, type RunningResync } from './scheduler.js';
import { holderEpoch, type ResyncRecord } from '../types.js';
import type { VolumeEntry } from '../volumes.js';

// Starting copies (manager/resync/resyncs.ts runs this in every pass):
//  - review running resyncs: one whose sources went stale, whose executor is
//    no longer the right one, or that made no progress for
//    `progressTimeoutMs` is dispatched again (a stall first to the same
//    executor under the same task id, which it dedupes; then re-planned);
//  - ask the scheduler (resync-scheduler.ts) which queued ones start, and
//    dispatch them: to the head holding the volume (StartResync, under its
//    lease epoch, once the head confirmed the map with the new replica, so
//    its writes reach the replica before the copy does) or, for a volume no
//    live head holds, to the target's storage node (CopyChunk) under an
//    epoch of its own granted like an attach (persisted first; a later
//    attach gets a higher one, which fences the copy).
// The record is "running" (persisted) before the executor hears of it, so a
// manager restart re-dispatches it from `regionsDone`.

const log = moduleLogger('manager.resync');

/** Stalls re-sent to the same executor before the resync is re-planned. */
const MAX_STALLS = 2;

export class ResyncDispatcher {
  constructor(private readonly ctx: ResyncContext) {}

  /** The executor that a resync of this volume gets now. */
  executorFor(entry: VolumeEntry): Executor {
    const { volume } = entry;
    // A snapshot's chunks take no write from a head (READ_ONLY, docs/snapshots.md): its
    // target is filled peer to peer, even while a head has it attached read-only.
    if (volume.kind === 'snapshot') return { kind: 'node' };
    const head = volume.attachedHead ? this.ctx.registry.head(volume.attachedHead) : undefined;
    const epoch = holderEpoch(volume);
    if (!head || epoch === undefined) return { kind: 'node' };
    // A node copy takes a new epoch, which fences the holder: only once its lease expired
    // (a holder cut off from us keeps serving until then; its copy is retried meanwhile).
    return head.state === 'active' || this.ctx.registry.leaseLeftMs(head.id) > 0 ? { kind: 'head', head, epoch } : { kind: 'node' };
  }

  async review(): Promise<void> {
    const now = this.ctx.registry.now();
    const again: ResyncRecord[] = [];
    for (const rec of this.ctx.book.all()) {
      if (rec.state !== 'running') continue;
      const entry = this.ctx.volumes.byVolumeId(rec.volumeId);
      if (!entry) continue;
      const rt = this.ctx.rt(rec);
      const problem = this.runningProblem(rec, entry);
      if (problem) {
        await this.requeue(rec, problem);
      } else if (now - rt.lastProgressMs > this.ctx.opts.progressTimeoutMs) {
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
  runningProblem(rec: ResyncRecord, entry: VolumeEntry): string | undefined {
    const { volume, map } = entry;
    const wrongTarget = targetProblem(rec, map);
    if (wrongTarget) return wrongTarget;
    const good = new Map(segmentReplicas(map, rec.segment).filter((x) => x.state === 'in_sync').map((x) => [x.diskId, x]));
    for (const d of rec.sources) {
      if (!good.has(d)) return `source ${d} is no longer in sync`;
      if (!this.ctx.usable(d)) return `source ${d} is no longer reachable`;
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

  async dispatchReady(): Promise<void> {
    const now = this.ctx.registry.now();
    const queued: QueuedResync[] = [];
    const running: RunningResync[] = [];
    for (const rec of this.ctx.book.all()) {
      if (rec.state === 'running') {
        const expected = this.ctx.rt(rec).bytesExpected;
        running.push({ id: rec.id, disks: [rec.target.diskId, ...rec.sources], bytesLeft: expected === undefined ? undefined : Math.max(0, expected - rec.bytesCopied) });
        continue;
      }
      const rt = this.ctx.rt(rec);
      const entry = this.ctx.volumes.byVolumeId(rec.volumeId);
      if (!entry || rt.notBefore > now || this.ctx.volumes.isBusy(rec.volumeId)) continue;
      const { map } = entry;
      if (targetProblem(rec, map) || !this.ctx.usable(rec.target.diskId)) continue;
      if (this.executorFor(entry).kind === 'head' && !this.ctx.pusher.headIsCurrent(rec.volumeId)) continue; // UpdateMap first
      const sources = segmentReplicas(map, rec.segment).filter((x) => x.state === 'in_sync' && this.ctx.usable(x.diskId)).map((x) => x.diskId);
      if (sources.length === 0 && !rt.noSourceLogged) {
        rt.noSourceLogged = true;
        log.error({ resync: rec.id, volume: entry.volume.name, segment: rec.segment },
          `resync ${rec.id} of ${entry.volume.name} seg ${rec.segment} has no in-sync replica on a live disk to copy from; it waits for one to come back`);
      }
      queued.push({ id: rec.id, goodCopies: sources.length, createdMs: rec.createdMs, target: rec.target.diskId, sources, bytes: rt.bytesExpected });
    }
    if (queued.length === 0) return;
    // Copy jobs count against the per-disk limit like running resyncs (job-disks.ts).
    for (const j of this.ctx.jobDisks.running()) running.push({ id: j.id, disks: j.disks });
    const { start, waiting } = scheduleResyncs(queued, running, this.ctx.opts.limits);
    if (start.length > 0 || waiting.noSource > 0) log.debug({ starting: start.length, running: running.length, waiting }, 'resync schedule');
    await mapLimit(start, 16, (s) => this.dispatch(this.ctx.book.get(s.id)!, s.sources, false));
  }

  /** Sends a resync to its executor; `same` re-sends the current attempt (the executor dedupes by id). */
  private async dispatch(rec: ResyncRecord, sources: string[], same: boolean): Promise<void> {
    const entry = this.ctx.volumes.byVolumeId(rec.volumeId);
    if (!entry) return;
    const { volume, map } = entry;
    const rt = this.ctx.rt(rec);
    const exec = this.executorFor(entry);
    const batch = this.ctx.store.batch();
    let epoch: number;
    let executor: string;
    let address: string;
    let who: string;
    if (exec.kind === 'head') {
      [epoch, executor, address, who] = [exec.epoch, `head:${exec.head.id}`, exec.head.controlAddress, `head ${exec.head.name}`];
    } else {
      const server = this.ctx.registry.serverOfDisk(rec.target.diskId);
      if (!server || server.state !== 'active') return;
      if (this.ctx.registry.claimWaitMs(volume) > 0) return; // a head may still hold it: its copy would fence it
      // A snapshot has no writer to fence: its copy runs at its epoch (a read-only head keeps its lease).
      if (volume.resyncEpoch !== volume.epoch && volume.kind !== 'snapshot') {
        // Granted like an attach, and durable before any node hears of it.
        volume.epoch += 1;
        volume.resyncEpoch = volume.epoch;
        batch.putVolume(volume);
        batch.event('lease.resync_epoch', `volume:${volume.name}`, `epoch granted to storage-node resync copies${volume.attachedHead ? ' (its head is gone: this fences it)' : ''}`,
          { epoch: volume.epoch, fencedHead: this.ctx.registry.head(volume.attachedHead)?.name ?? volume.attachedHead });
        log.info({ volumeId: volume.id, volume: volume.name, epoch: volume.epoch, fencedHead: volume.attachedHead || undefined },
          `lease epoch ${volume.epoch} of ${volume.name} granted to storage-node resync copies${volume.attachedHead ? ' (its head is gone: this fences it)' : ''}`);
      }
      [epoch, executor, address, who] = [volume.epoch, `node:${server.id}`, server.controlAddress, `node ${server.name}`];
    }
    if (!same) {
      rec.attempt++;
      rec.startedMs = this.ctx.registry.now();
      rt.attemptBytes = 0;
    }
    Object.assign(rec, { state: 'running', executor, sources, epoch });
    rt.redispatch = false;
    rt.lastProgressMs = this.ctx.registry.now();
    batch.putResync(rec);
    if (!same) {
      batch.event('resync.started', `volume:${volume.name}`, `${rec.kind === 'drain' ? 'drain copy' : 'rebuild'} of seg ${rec.segment} slot ${rec.slot} by ${who}`, {
        resync: rec.id, attempt: rec.attempt, kind: rec.kind ?? 'rebuild', segment: rec.segment, slot: rec.slot, executor: who, epoch,
        sources: sources.join(' '), target: `${rec.target.diskId}#${rec.target.chunkIndex}`, startRegion: rec.regionsDone,
      });
    }
    await this.ctx.store.write(batch);
    const task: ResyncTask = {
      resyncId: `${rec.id}.${rec.attempt}`, volumeId: volume.id, volumeName: volume.name, segment: rec.segment, chunkSize: volume.chunkSize,
      target: taskLocation(this.ctx.registry, rec.target, targetIdSlot(rec, map), 'resyncing'),
      sources: sources.map((d) => {
        const x = segmentReplicas(map, rec.segment).find((y) => y.diskId === d && !y.move)!;
        return taskLocation(this.ctx.registry, x, x.idSlot, 'in_sync');
      }),
      epoch, generation: volume.generation, startRegion: rec.regionsDone, throttleMibps: this.ctx.opts.throttleMibps, managerAddress: this.ctx.managerAddress(),
    };
    const line = `resync ${task.resyncId} ${same ? 're-sent' : 'started'}: sources [${sources.join(', ')}] -> target ${rec.target.diskId}#${rec.target.chunkIndex} (executor ${who})`;
    try {
      if (exec.kind === 'head') await this.ctx.peers.head.startResync(address, task);
      else await this.ctx.peers.node.copyChunk(address, task);
    } catch (err) {
      rt.notBefore = this.ctx.registry.now() + Math.min(30_000, 1000 * 2 ** Math.min(rec.failures, 5));
      log.warn({ resync: rec.id, executor, err: errorMessage(err) }, `${line} failed to dispatch: ${errorMessage(err)}; retried later`);
      if (rec.state === 'running' && rec.executor === executor) await this.requeue(rec, `dispatch failed: ${errorMessage(err)}`, true);
      return;
    }
    log.info({ resync: rec.id, volume: volume.name, segment: rec.segment, slot: rec.slot, epoch, startRegion: rec.regionsDone, goodCopies: task.sources!.length }, line);
  }

  async requeue(rec: ResyncRecord, why: string, quiet = false): Promise<void> {
    if (!quiet) log.warn({ resync: rec.id, executor: rec.executor }, `resync ${rec.id}.${rec.attempt} stopped: ${why}; queued again`);
    const executor = rec.executor;
    Object.assign(rec, { state: 'queued', executor: '', sources: [], lastError: why });
    const volume = this.ctx.volumes.byVolumeId(rec.volumeId)?.volume.name ?? String(rec.volumeId);
    await this.ctx.store.write(this.ctx.store.batch().putResync(rec).event('resync.requeued', `volume:${volume}`, why,
      { resync: rec.id, attempt: rec.attempt, kind: rec.kind ?? 'rebuild', segment: rec.segment, slot: rec.slot, executor }));
  }
}
