import { formatSize } from '../../shared/units.js';
import { moduleLogger } from '../../shared/logger.js';
import {
  clearMove, identitySlot, moveOf, positionOf, replicaLocation, sameChunk, setIdentitySlot, setReplicaLocation, setReplicaState, targetIdSlot,
} from '../chunk-map.js';
import type { ResyncContext } from './context.js';
import type { ResyncDispatcher } from './dispatch.js';
import type { ResyncRecord, ToFreeRecord } from '../types.js';
import type { VolumeEntry } from '../volumes.js';

// How copies end (reported by their executors through manager/resync/resyncs.ts):
//  - finished: one batch marks the replica in sync (a rebuild) or points the
//    slot at its drain target and frees the drained chunk (a drain), drops
//    the record and moves the generation forward (rule 5: every storage job
//    moves it);
//  - failed: retried with new sources; a target that keeps failing is
//    replaced by a new spare (a rebuild) or dropped for another (a drain).

const log = moduleLogger('manager.resync');

/** Failed copies onto one target before it is replaced by a new spare. */
const MAX_TARGET_FAILURES = 3;

export class ResyncOutcomes {
  constructor(private readonly ctx: ResyncContext, private readonly dispatcher: ResyncDispatcher) {}

  async copyFailed(rec: ResyncRecord, entry: VolumeEntry, error: string): Promise<void> {
    rec.failures++;
    const rt = this.ctx.rt(rec);
    rt.notBefore = this.ctx.registry.now() + Math.min(30_000, 1000 * 2 ** Math.min(rec.failures - 1, 5));
    const batch = this.ctx.store.batch();
    const { map } = entry;
    let retarget = false;
    const r = positionOf(map, rec.segment, rec.slot);
    const move = moveOf(map, r);
    if (rec.failures >= MAX_TARGET_FAILURES && move) {
      // A drain target that keeps failing: dropped; the next drain pass picks another.
      await this.dropMove(rec, entry, `${rec.failures} failed copies onto it (${error})`);
      this.ctx.wake('drain target dropped');
      return;
    }
    if (rec.failures >= MAX_TARGET_FAILURES) {
      // Sources change at every retry; a target that keeps failing is replaced.
      retarget = setReplicaState(map, r, 'stale');
      if (retarget) batch.putChunkMap(map);
      rt.notBefore = 0;
    }
    log.warn({ resync: rec.id, executor: rec.executor, failures: rec.failures, retarget }, `resync ${rec.id}.${rec.attempt} failed: ${error}${retarget ? `; ${rec.failures} failures onto target ${rec.target.diskId}: a new spare replaces it` : '; retried with a new choice of sources'}`);
    batch.event('resync.failed', `volume:${entry.volume.name}`, `${error}${retarget ? `; ${rec.failures} failures onto target ${rec.target.diskId}: a new spare replaces it` : '; retried with a new choice of sources'}`,
      { resync: rec.id, attempt: rec.attempt, kind: rec.kind ?? 'rebuild', segment: rec.segment, slot: rec.slot, executor: rec.executor, failures: rec.failures, retarget });
    Object.assign(rec, { state: 'queued', executor: '', sources: [], lastError: error });
    batch.putResync(rec);
    await this.ctx.store.write(batch);
    if (retarget) this.ctx.pusher.changed(rec.volumeId);
    this.ctx.wake('resync failed');
  }

  /** Commits a finished copy; false when it no longer counts (its target or a source changed). */
  async finish(rec: ResyncRecord, entry: VolumeEntry): Promise<boolean> {
    const { volume, map } = entry;
    const r = positionOf(map, rec.segment, rec.slot);
    const problem = this.dispatcher.runningProblem(rec, entry);
    if (problem) {
      await this.dispatcher.requeue(rec, `finished copy refused: ${problem}`);
      this.ctx.wake('resync refused');
      return false;
    }
    const batch = this.ctx.store.batch();
    const move = moveOf(map, r);
    const toFree: ToFreeRecord[] = [];
    if (move) {
      // The drain's copy becomes the replica; the drained chunk is freed once the holder has the new map.
      toFree.push({ ...replicaLocation(map, r), volumeId: volume.id, segment: rec.segment, idSlot: identitySlot(map, r),
        reason: `drained by resync ${rec.id}`, sinceMs: this.ctx.registry.now() });
      setReplicaLocation(map, r, rec.target);
      setIdentitySlot(map, r, move.idSlot);
      clearMove(map, r);
      this.ctx.freer.stage(batch, toFree);
    } else {
      setReplicaState(map, r, 'in_sync');
    }
    volume.generation += 1;
    batch.event('resync.finished', `volume:${volume.name}`, move ? `drain copy done: seg ${rec.segment} slot ${rec.slot} now on ${rec.target.diskId}` : `rebuild done: seg ${rec.segment} slot ${rec.slot} in sync`, {
      resync: rec.id, attempt: rec.attempt, kind: move ? 'drain' : 'rebuild', segment: rec.segment, slot: rec.slot, generation: volume.generation,
      bytes: rec.bytesCopied, ms: this.ctx.registry.now() - rec.startedMs, target: `${rec.target.diskId}#${rec.target.chunkIndex}`, executor: rec.executor,
    });
    await this.ctx.store.write(batch.putChunkMap(map).putVolume(volume).delResync(rec.id));
    this.ctx.freer.track(toFree);
    this.ctx.book.remove(rec);
    this.ctx.forget(rec);
    const now = this.ctx.registry.now();
    const secs = ((now - rec.startedMs) / 1000).toFixed(1);
    log.info({ resync: rec.id, volumeId: volume.id, volume: volume.name, segment: rec.segment, slot: rec.slot, generation: volume.generation,
      bytes: rec.bytesCopied, sinceFailureS: Math.round((now - rec.createdMs) / 100) / 10, drained: move ? toFree[0] : undefined },
    `${move ? 'drain copy' : 'resync'} ${rec.id} done in ${secs} s (${formatSize(rec.bytesCopied)}): ${volume.name} seg ${rec.segment} slot ${rec.slot} ` +
      `${move ? `now on ${rec.target.diskId}#${rec.target.chunkIndex}` : 'in sync'}, generation ${volume.generation}`);
    this.ctx.pusher.changed(volume.id);
    if (toFree.length > 0) this.ctx.track(this.ctx.freer.free(toFree));
    this.ctx.wake('resync done');
    return true;
  }

  /** Ends a drain copy whose target is not wanted any more: the target leaves the map and is freed, the record goes. */
  async dropMove(rec: ResyncRecord, entry: VolumeEntry, why: string): Promise<void> {
    const { volume, map } = entry;
    const r = positionOf(map, rec.segment, rec.slot);
    const move = moveOf(map, r);
    const batch = this.ctx.store.batch().delResync(rec.id).event('drain.target_dropped', `volume:${volume.name}`, `drain copy ${rec.id} dropped: ${why}; the drain picks another target`,
      { resync: rec.id, segment: rec.segment, slot: rec.slot, disk: rec.target.diskId, chunk: rec.target.chunkIndex });
    const toFree: ToFreeRecord[] = [{ ...rec.target, volumeId: volume.id, segment: rec.segment, idSlot: move?.idSlot ?? targetIdSlot(rec, map),
      reason: `drain copy ${rec.id} dropped`, sinceMs: this.ctx.registry.now() }];
    if (move && sameChunk(move, rec.target)) {
      clearMove(map, r);
      batch.putChunkMap(map);
    }
    this.ctx.freer.stage(batch, toFree);
    await this.ctx.store.write(batch);
    this.ctx.freer.track(toFree);
    this.ctx.book.remove(rec);
    this.ctx.forget(rec);
    log.warn({ resync: rec.id, volume: volume.name, segment: rec.segment, slot: rec.slot, target: rec.target },
      `drain copy ${rec.id} of ${volume.name} seg ${rec.segment} slot ${rec.slot} dropped: ${why}; the drain picks another target`);
    this.ctx.pusher.changed(volume.id);
    this.ctx.track(this.ctx.freer.free(toFree));
  }
}
