import { ConflictError, IoError, NotFoundError, StaleEpochError, errorMessage } from '../../shared/errors.js';
import { failPoint } from '../../shared/fault-points.js';
import type { Logger } from '../../shared/logger.js';
import type { LinearVolume } from '../engine/linear-volume.js';
import type { Mirror, ReplicaFailureHandler } from '../engine/mirror.js';
import type { NodePool } from '../engine/node-pool.js';
import type { Replica, ReplicaState } from '../engine/replica.js';
import { applyBackingReplicas, logBackingUpdate } from './backing-update.js';
import { buildSegments, newReplica } from './segments.js';
import { replicaState, validateMap, type VolumeMap } from './validate-map.js';

// UpdateMap (same lease epoch) applied to an attached volume: replica states
// and locations change in place, new replicas are fenced first, a larger map
// grows the volume (head-agent/attachments.ts updateMap).

export interface MapUpdateContext {
  pool: NodePool;
  failureHandler: ReplicaFailureHandler;
  log: Logger;
  volumes: ReadonlyMap<string, LinearVolume>;
}

export async function applyMapUpdate(ctx: MapUpdateContext, map: VolumeMap, epoch: number, segmentChanged?: number): Promise<void> {
  validateMap(map, epoch);
  const volume = ctx.volumes.get(map.name);
  if (volume === undefined) throw new NotFoundError(`volume ${map.name} is not attached to this head`, { volume: map.name });
  if (volume.volumeId !== map.volumeId || volume.chunkSize !== map.chunkSize) {
    throw new ConflictError(`UpdateMap for ${map.name} does not match the attached volume (id or chunk size differ); detach and attach again`, { volume: map.name });
  }
  if (map.size < volume.size) {
    throw new ConflictError(`UpdateMap for ${map.name} has ${map.size} bytes, the volume attached here ${volume.size}: volumes only grow; map refused, nothing changed`, { volume: map.name });
  }
  if (epoch < volume.epoch) {
    throw new StaleEpochError(`volume ${map.name} is attached here with epoch ${volume.epoch}; refusing a map for older epoch ${epoch}`, { volume: map.name });
  }
  // A standby does no I/O under its epoch (a grant brings the next one): it takes the holder's maps as they are.
  if (epoch > volume.epoch && volume.lease !== 'standby') {
    throw new ConflictError(`volume ${map.name} is attached here with epoch ${volume.epoch}; a map for epoch ${epoch} needs Attach (fencing)`, { volume: map.name });
  }
  const oldCount = volume.segmentCount;
  if (map.size > volume.size) failPoint('head.grow', map.name);
  // Online resize: the new segments' chunks were allocated by the manager under this epoch (durable on
  // their nodes before this map was sent), so they take writes without a fence.
  const added = map.size > volume.size ? buildSegments(ctx.pool, ctx.failureHandler, { ...map, segments: map.segments.filter((seg) => seg.index >= oldCount) }, volume.tracker) : [];
  const plans: { mirror: Mirror; replicas: Replica[]; fresh: Replica[] }[] = [];
  for (const seg of map.segments) {
    if (seg.index >= oldCount) continue;
    const mirror = volume.segment(seg.index);
    // Thin: allocation changes only through this head's own AllocateSegment/FreeSegment answer (applySegment).
    if ((mirror.replicas.length === 0) !== (seg.replicas.length === 0) && seg.index !== segmentChanged) continue;
    const replicas: Replica[] = [];
    const fresh: Replica[] = [];
    for (const loc of [...seg.replicas].sort((a, b) => a.slot - b.slot)) {
      const kept = mirror.replicas.find((r) => r.isAt(loc));
      if (kept !== undefined) {
        replicas.push(kept);
      } else {
        const r = newReplica(ctx.pool, map, seg.index, loc);
        replicas.push(r);
        fresh.push(r);
      }
    }
    plans.push({ mirror, replicas, fresh });
  }
  // New replicas (spares) take writes only once their node has our epoch.
  const unfenced = new Set<Replica>();
  const fresh = plans.flatMap((p) => p.fresh);
  const byNode = new Map<string, Replica>();
  for (const r of fresh) if (!byNode.has(r.address)) byNode.set(r.address, r);
  const fenceErrors: string[] = [];
  await Promise.all([...byNode.values()].map((r) => r.fence(epoch, map.generation).catch((err: unknown) => {
    for (const f of fresh) if (f.address === r.address) unfenced.add(f);
    fenceErrors.push(`${r.describe()}: ${errorMessage(err)}`);
  })));
  // The backing chain's replica sets (a snapshot replica moved by a resync, drain or spare): checked, then applied.
  const backingOut = applyBackingReplicas(volume.backing, map.backing ?? [], ctx.pool);
  // Apply synchronously: every mirror sees the new states in the same tick.
  for (const { mirror, replicas } of plans) {
    const wasWritable = new Set(mirror.replicas.filter((r) => r.writable));
    for (const r of replicas) {
      const loc = map.segments.find((s) => s.index === mirror.index)!.replicas.find((l) => r.isAt(l))!;
      applyState(r, replicaState(loc.state), unfenced.has(r));
    }
    mirror.applyReplicas(replicas);
    // A replica that starts taking writes has none of the write-intent marks: re-mark on the next writes.
    if (replicas.some((r) => r.writable && !wasWritable.has(r))) mirror.intent?.forget();
  }
  const was = volume.size;
  if (added.length > 0) volume.grow(map.size, added); // same tick: new I/O sees the new size and its segments together
  volume.replicasChanged();
  volume.noteGeneration(map.generation);
  for (const { mirror } of plans) ctx.failureHandler.mapApplied?.(mirror);
  for (const mirror of added) ctx.failureHandler.mapApplied?.(mirror);
  if (added.length > 0) {
    ctx.log.info({ volume: map.name, volumeId: map.volumeId, epoch, generation: map.generation, from: was, to: map.size, segments: volume.segmentCount, lease: volume.lease }, 'volume grown (online resize)');
  } else {
    ctx.log.info({ volume: map.name, volumeId: map.volumeId, epoch, generation: map.generation }, 'volume map updated');
  }
  logBackingUpdate(ctx.log, map.name, map.volumeId, backingOut);
  if (fenceErrors.length > 0) {
    throw new IoError(`volume ${map.name}: map applied, but new replica(s) could not be fenced and take no I/O: ${fenceErrors.join('; ')}`, { volume: map.name });
  }
}

/**
 * The state a map gives a replica this head already uses. Never makes one
 * this head saw fail (suspect) or knows missed writes (mustResync) readable:
 * the map may predate our report, or a stale mark. Resyncing or stale from the
 * manager settles a suspect replica (the manager has it out of sync).
 */
function applyState(r: Replica, next: ReplicaState, unfenced: boolean): void {
  if (unfenced || next === 'stale') {
    r.markStale();
    return;
  }
  if (next === 'in_sync' && (r.suspect || r.mustResync)) {
    if (!r.suspect) r.state = 'resyncing'; // written, never read: safe whichever map is newer
    return;
  }
  r.state = next;
  r.suspect = false;
}
