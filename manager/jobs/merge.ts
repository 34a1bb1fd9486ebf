import { ConflictError, InvalidArgumentError, NotFoundError } from '../../shared/errors.js';
import { moduleLogger } from '../../shared/logger.js';
import { segmentReplicas } from '../chunk-map.js';
import type { PeerClients } from '../node-clients.js';
import type { PlacementModel } from '../placement.js';
import type { Registry } from '../registry.js';
import type { ManagerStore } from '../store.js';
import { assignSegment, segmentChunks, unassignSegment } from '../thin/segment-map.js';
import { setIdentitySlot } from '../chunk-map.js';
import type { VolumeEntry, Volumes } from '../volumes.js';
import { putJob, type JobRecord } from './records.js';

// Snapshot delete with merge (docs/snapshots.md): `vsky snapshot delete S`
// when S's only dependent is its origin V runs a flatten job of V with
// args.merge = S. Before V copies anything, while the manager holds V
// (detached: flatten-job.ts detachedRest), every segment V has no chunk for
// and S has in-sync chunks for is handed back to V without a copy:
//  1. one batch moves the chunk locations from S's map to V's and records the
//     segments in the job (j.merged), so a restart finishes step 2;
//  2. each chunk takes V's identity on its node (ReassignChunk from S under
//     S's epoch; idempotent: a chunk that has it already answers OK).
// The rest is the flatten: V copies what it still reads through S (and S's
// own backing) into its chunks, drops its backing, and the job deletes S.
// An attached V is not handed chunks (its head's written bits would not know
// them): its head copies everything, as for any flatten.

const log = moduleLogger('manager.jobs.merge');

export interface MergeContext {
  store: ManagerStore;
  model: PlacementModel;
  registry: Registry;
  peers: PeerClients;
  volumes: Volumes;
  resyncsOf?(volumeId: number): number;
}

/** Checks a merge request: `snapshot` is `volume`'s backing, a snapshot of it, and nothing else reads from it. */
export function checkMerge(volumes: Volumes, volume: string, snapshot: string): void {
  const v = volumes.entry(volume).volume;
  const s = volumes.find(snapshot)?.volume;
  if (!s) throw new NotFoundError(`no snapshot "${snapshot}": see vsky snapshot list`, { snapshot });
  if (s.kind !== 'snapshot' || v.backing !== s.id || s.origin !== v.id) {
    throw new InvalidArgumentError(`merge: ${snapshot} is not the snapshot ${volume} was taken into and reads from; nothing changed`, { snapshot, volume });
  }
  const others = volumes.dependents(s.id).filter((d) => d.id !== v.id).map((d) => d.name).sort();
  if (others.length > 0) {
    throw new ConflictError(`snapshot ${snapshot} cannot be merged into ${volume}: ${others.join(', ')} read${others.length === 1 ? 's' : ''} unwritten regions from it; `
      + `flatten ${others.length === 1 ? 'it' : 'them'} first (vsky volume flatten ${others[0]}) or delete ${others.length === 1 ? 'it' : 'them'}; nothing changed`, { snapshot, dependents: others.join(',') });
  }
}

/** Hands S's in-sync chunks of the segments V has none for to V (the manager holds V, detached, at the job's epoch). */
export async function handOver(ctx: MergeContext, j: JobRecord, v: VolumeEntry): Promise<number> {
  const s = ctx.volumes.find(j.args.merge ?? '');
  if (!s) throw new NotFoundError(`merge: snapshot ${j.args.merge} is gone`);
  if (j.merged === undefined) {
    const segments: number[] = [];
    if ((ctx.resyncsOf?.(s.volume.id) ?? 0) === 0) {
      for (let seg = 0; seg < v.map.segmentCount; seg++) {
        const own = segmentReplicas(v.map, seg);
        const theirs = segmentReplicas(s.map, seg);
        if (own.length === 0 && theirs.length === v.map.replicas && theirs.every((r) => r.state === 'in_sync' && !r.move)) segments.push(seg);
      }
    }
    for (const seg of segments) {
      const chunks = segmentChunks(s.map, seg);
      assignSegment(v.map, seg, chunks);
      for (const c of chunks) setIdentitySlot(v.map, seg * v.map.replicas + c.slot, c.idSlot);
      unassignSegment(s.map, seg);
      for (const c of chunks) {
        ctx.model.release(c.diskId, c.chunkIndex, s.volume.id);
        ctx.model.claim(c.diskId, c.chunkIndex, v.volume.id);
      }
    }
    j.merged = segments;
    await ctx.store.write(ctx.store.batch().putChunkMap(v.map).putChunkMap(s.map).putJob(j)
      .event('snapshot.merging', `volume:${v.volume.name}`, `snapshot ${s.volume.name} merges into ${v.volume.name}: ${segments.length} segment(s) handed back without a copy`,
        { job: j.id, snapshot: s.volume.name, segments: segments.join(',') }));
    log.info({ job: j.id, volume: v.volume.name, snapshot: s.volume.name, segments }, 'merge: segments handed back to the origin');
  }
  await reassignAll(ctx, j, v, s);
  return j.merged.length;
}

/** Every handed-over chunk takes V's identity on its node. */
async function reassignAll(ctx: MergeContext, j: JobRecord, v: VolumeEntry, s: VolumeEntry): Promise<void> {
  const api = ctx.peers.node.reassignChunk;
  if (api === undefined) throw new InvalidArgumentError('storage nodes cannot reassign chunks (peer API missing)');
  const vol = v.volume;
  for (const seg of j.merged ?? []) {
    await Promise.all(segmentChunks(v.map, seg).map((c) => {
      const server = ctx.registry.serverOfDisk(c.diskId);
      if (!server) throw new Error(`disk ${c.diskId} has no server`);
      return api(server.controlAddress, {
        diskId: c.diskId, chunkIndex: c.chunkIndex, fromVolumeId: s.volume.id, fromEpoch: s.volume.epoch,
        identity: {
          volumeId: vol.id, volumeName: vol.name, volumeSize: vol.size, segment: seg, slot: c.idSlot, segmentCount: vol.segmentCount,
          replicas: vol.replicas, generation: vol.generation, epoch: vol.epoch, lvolid: vol.intId ?? 0, thin: true,
        },
      });
    }));
  }
  await putJob(ctx.store, j);
}
