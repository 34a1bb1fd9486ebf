import { ConflictError, VskyError, errorMessage } from '../../shared/errors.js';
import { crashPoint } from '../../shared/fault-points.js';
import { moduleLogger } from '../../shared/logger.js';
import { formatSize } from '../../shared/units.js';
import type { HeadRecord, VolumeRecord } from '../types.js';
import { holderEpoch } from '../types.js';
import { volumeMapView } from '../views.js';
import type { VolumeEntry } from '../volumes.js';
import type { JobRecord } from './records.js';
import { allocateGrowth, appendSegments, freeGrowth, truncateSegments, type ResizeContext } from './resize-chunks.js';

// Online resize: growing a volume attached to a head (docs/jobs.md, "Resize
// of an attached volume"). The holder keeps its lease and its epoch e; the
// manager, holding the volume (volumes.exclusive: no hand-off, attach or
// detach meanwhile), is the worker and writes the generation CASes under e,
// which the nodes accept (their check is epoch >= the volume's minimum) and
// which fence nobody. The order makes every step safe to stop at:
//
//   1. CAS g + DIRTY under e (runner.ts), then allocate the new chunks under
//      e (the holder may write them) with generation g: a failure frees them.
//   2. Commit the new size and chunk map (generation still g): from here the
//      chunks are referenced by committed metadata, so garbage collection
//      keeps them even if the manager dies, and a restarted manager pushes
//      the grown map to the holder (map pusher).
//   3. UpdateMap to the holder: it appends the segments and takes the new
//      size in one tick. A head that answers with a refusal, and then lists
//      the volume at its old size, never used the new chunks: the size and
//      map are reverted and the chunks freed. A head that does not answer
//      may have applied it: nothing is undone (it could have acknowledged
//      writes in the new space); the map is re-sent by the map pusher.
//   4. UpdateMap to the standby, if any (best effort: it does no I/O, and
//      its grant carries the whole map anyway).
//   5. runner.ts: CAS {g+1, LEGAL, succeeded, new shape} under e, then the
//      generation and the job's end in one batch.

const log = moduleLogger('manager.jobs.online-resize');

export interface OnlineResizeContext extends ResizeContext {
  /** Throws if the job was aborted or the manager stops (runner.ts). */
  checkAbort: (j: JobRecord) => void;
  /** The volume's map changed without the holder confirming it: the map pusher re-sends it. */
  mapChanged?: (volumeId: number) => void;
}

/** The holder and its epoch, or a clear error why the volume cannot grow online now. */
export function onlineHolder(ctx: ResizeContext, volume: VolumeRecord): { head: HeadRecord; epoch: number } {
  const head = ctx.registry.head(volume.attachedHead);
  const epoch = holderEpoch(volume);
  if (!head || epoch === undefined) {
    throw new ConflictError(`volume ${volume.name} is attached but no head holds its write lease now (a storage-node resync holds it); retry the resize once its holder has it back`);
  }
  if (head.state !== 'active') {
    throw new ConflictError(`volume ${volume.name} is held by head ${head.name}, which is ${head.state} (no heartbeat): it cannot take the grown map; nothing changed`);
  }
  return { head, epoch };
}

/** Steps 1-4 above; returns once the holder has the grown map (or may have it). */
export async function growOnline(ctx: OnlineResizeContext, j: JobRecord, e: VolumeEntry): Promise<void> {
  const { volume, map } = e;
  const { head, epoch } = onlineHolder(ctx, volume);
  const size = Number(j.args.size);
  const oldSize = volume.size;
  const oldCount = volume.segmentCount;
  const newCount = Math.ceil(size / volume.chunkSize);
  const placed = await allocateGrowth(ctx, j, volume, size, epoch);
  try {
    ctx.checkAbort(j);
  } catch (err) {
    await freeGrowth(ctx, j, volume.id, placed);
    throw err;
  }
  appendSegments(map, oldCount, newCount, placed);
  volume.size = size;
  volume.segmentCount = newCount;
  await ctx.store.write(ctx.store.batch().putVolume(volume).putChunkMap(map).putJob(j));
  log.info({ job: j.id, volume: volume.name, from: oldSize, to: size, segments: newCount }, 'online resize: new size and chunk map committed at generation g; sending the map to the holder');
  crashPoint('manager.job.grown');
  try {
    await ctx.peers.head.updateMap(head.controlAddress, { map: volumeMapView(volume, map, ctx.registry), epoch, iscsi: volume.access });
  } catch (err) {
    if (await keptOldSize(ctx, head, volume.name, err, size)) {
      truncateSegments(map, oldCount);
      volume.size = oldSize;
      volume.segmentCount = oldCount;
      await freeGrowth(ctx, j, volume.id, placed, ctx.store.batch().putVolume(volume).putChunkMap(map));
      throw new VskyError(err instanceof VskyError ? err.code : 'EINTERNAL',
        `resize of ${volume.name}: head ${head.name} refused the grown map (${errorMessage(err)}); the new chunks are freed, the size stays ${formatSize(oldSize)}`, { jobId: j.id });
    }
    log.warn({ job: j.id, volume: volume.name, head: head.name, err: errorMessage(err) },
      'online resize: the holder did not confirm the grown map and may have applied it: the new size stays committed, the map is re-sent');
    ctx.mapChanged?.(volume.id);
  }
  await pushToStandby(ctx, j, volume, e);
}

/**
 * After a failed UpdateMap: true only when the head answered (a refusal, not
 * a lost call) and now lists the volume below the new size, so it never used
 * the new chunks. Its registry applies maps one at a time, so the refused
 * request is over by the time it answered.
 */
async function keptOldSize(ctx: ResizeContext, head: HeadRecord, name: string, err: unknown, size: number): Promise<boolean> {
  if (!(err instanceof VskyError) || err.code === 'ETRANSPORT' || err.code === 'ETIMEDOUT' || !ctx.peers.head.listAttached) return false;
  try {
    const { volumes } = await ctx.peers.head.listAttached(head.controlAddress);
    const v = volumes.find((x) => x.name === name);
    return v === undefined || v.size < size;
  } catch {
    return false;
  }
}

async function pushToStandby(ctx: ResizeContext, j: JobRecord, volume: VolumeRecord, e: VolumeEntry): Promise<void> {
  const standby = volume.standbyHead ? ctx.registry.head(volume.standbyHead) : undefined;
  if (!standby) return;
  try {
    await ctx.peers.head.updateMap(standby.controlAddress, { map: volumeMapView(volume, e.map, ctx.registry), epoch: volume.epoch, iscsi: volume.access });
    log.info({ job: j.id, volume: volume.name, standby: standby.name }, 'online resize: the standby head has the grown map');
  } catch (err) {
    // Safe: a standby sends nothing to storage, and the grant that gives it the lease carries the whole (grown) map.
    log.warn({ job: j.id, volume: volume.name, standby: standby.name, err: errorMessage(err) },
      'online resize: the standby head did not take the grown map; its new NBD/iSCSI clients see the old size until it gets the lease');
  }
}

/** Whether the volume's committed size is the job's target (recovery after a restart: step 3 happened). */
export function grownTo(j: JobRecord, v: VolumeRecord): boolean {
  return v.size >= Number(j.args.size);
}
