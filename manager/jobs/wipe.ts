import { ConflictError, errorMessage } from '../../shared/errors.js';
import { moduleLogger } from '../../shared/logger.js';
import { setReplicaState } from '../chunk-map.js';
import { mapLimit, type PeerClients } from '../node-clients.js';
import type { Registry } from '../registry.js';
import type { ManagerStore } from '../store.js';
import { forEachReplica, type ReplicaRef } from '../types.js';
import type { VolumeEntry } from '../volumes.js';
import type { JobDataPath } from './data-path.js';
import { casNodes, trustedNodes, unreachable, type VolumeStateCas } from './node-cas.js';
import type { JobRecord } from './records.js';

// The wipe's work (docs/jobs.md, kind wipe): the manager zeroes every
// replica the volume reads from (DISCARD under the job's epoch over the data
// protocol), then flushes each.
//
// It needs only the in-sync replicas of each segment, not every node:
//  - replicas already stale are skipped (never read; they are replaced and
//    resynced from in-sync data);
//  - a node that does not answer the first compare-and-set (transport error
//    or timeout: down, killed, cut off) is left out of the job, and every
//    replica it holds is marked stale, durably, before any data is zeroed, so
//    it is resynced from the wiped data and never trusted again. A node that
//    answers with a refusal (a generation mismatch) still fails the job;
//  - every segment must keep an in-sync replica on a node that answered,
//    else the job fails (nothing zeroed, the volume DIRTY at g).
// Resync targets and drain targets on nodes that answered are zeroed like
// the replicas (they are written like replicas, so what a resync copied into
// them before the job must not survive it).

const log = moduleLogger('manager.jobs.wipe');
/** DISCARD requests are this big at most: the worker checks for an abort between them. */
const ZERO_STEP = 32 * 1024 * 1024;

export interface WipeContext {
  store: ManagerStore;
  registry: Registry;
  peers: PeerClients;
  path: () => JobDataPath;
  checkAbort: (j: JobRecord) => void;
  /** Replicas of the volume were marked stale (durably): the map pusher and the resync passes take it from there. */
  staleMarked?: (volumeId: number, reason: string) => void;
}

/**
 * The DIRTY compare-and-set of a wipe: on every trusted node; the nodes that
 * do not answer are left out and their replicas marked stale. Returns the
 * nodes the job goes on with (control address -> data address).
 */
export async function wipeDirty(ctx: WipeContext, j: JobRecord, e: VolumeEntry, req: VolumeStateCas): Promise<Map<string, string>> {
  const nodes = trustedNodes(ctx.registry, e.map);
  const results = await casNodes(ctx.peers, [...nodes.keys()], e.volume.id, req);
  const lost = new Map<string, string>();
  for (const [a, err] of results) {
    if (err === undefined) continue;
    if (!unreachable(err)) throw err;
    lost.set(a, errorMessage(err));
    nodes.delete(a);
  }
  if (lost.size > 0) await markLost(ctx, j, e, lost);
  checkCovered(e, nodes, ctx.registry);
  return nodes;
}

/** Marks every replica on the lost nodes stale, in one batch, before anything is zeroed. */
async function markLost(ctx: WipeContext, j: JobRecord, e: VolumeEntry, lost: ReadonlyMap<string, string>): Promise<void> {
  const { volume, map } = e;
  const refs: ReplicaRef[] = [];
  forEachReplica(map, (ref) => {
    const s = ctx.registry.serverOfDisk(ref.diskId);
    if (s && lost.has(s.controlAddress) && ref.state !== 'stale') refs.push(ref);
  });
  const moved = refs.find((r) => r.move);
  if (moved) {
    throw new ConflictError(`wipe of ${volume.name}: the drain target of segment ${moved.segment} slot ${moved.slot} is on a node that does not answer (${[...lost.values()][0]}); retry when the node is back or the drain is cancelled`);
  }
  const servers = [...lost.keys()].map((a) => ctx.registry.listServers().find((s) => s.controlAddress === a)?.name ?? a);
  const reason = `wipe job ${j.id}: ${servers.join(', ')} did not answer (${[...lost.values()][0]}); its replicas are resynced from the wiped data`;
  for (const ref of refs) setReplicaState(map, ref.r, 'stale');
  const batch = ctx.store.batch().putChunkMap(map);
  batch.event('replica.stale', `volume:${volume.name}`, reason, { replicas: refs.length, segmentSlots: refs.slice(0, 16).map((r) => `${r.segment}/${r.slot}`).join(' '), job: j.id, servers: servers.join(' ') });
  await ctx.store.write(batch);
  log.warn({ job: j.id, volume: volume.name, servers, replicas: refs.length }, `${refs.length} replica(s) of ${volume.name} stale: ${reason}`);
  ctx.staleMarked?.(volume.id, reason);
}

/** Every segment keeps an in-sync replica on a node the job goes on with. */
function checkCovered(e: VolumeEntry, nodes: ReadonlyMap<string, string>, registry: Registry): void {
  const covered = new Set<number>();
  forEachReplica(e.map, (ref) => {
    const s = registry.serverOfDisk(ref.diskId);
    if (ref.state === 'in_sync' && !ref.move && s && nodes.has(s.controlAddress)) covered.add(ref.segment);
  });
  for (let seg = 0; seg < e.volume.segmentCount; seg++) {
    if (!covered.has(seg)) {
      throw new ConflictError(`wipe of ${e.volume.name}: segment ${seg} has no in-sync replica on a node that answers; nothing was zeroed; retry when a node holding it is back`);
    }
  }
}

/** Zeroes every non-stale replica on the job's nodes (DISCARD under the job's epoch), then flushes each. */
export async function wipeReplicas(ctx: WipeContext, j: JobRecord, e: VolumeEntry, nodes: ReadonlyMap<string, string>): Promise<void> {
  const { volume, map } = e;
  const replicas: Array<{ segment: number; idSlot: number; data: string; length: number }> = [];
  forEachReplica(map, (r) => {
    const s = ctx.registry.serverOfDisk(r.diskId);
    if (r.state === 'stale' || !s || !nodes.has(s.controlAddress)) return;
    replicas.push({ segment: r.segment, idSlot: r.idSlot, data: s.dataAddress, length: Math.min(volume.chunkSize, volume.size - r.segment * volume.chunkSize) });
  });
  j.total = replicas.reduce((n, r) => n + r.length, 0);
  j.done = 0;
  const path = ctx.path();
  try {
    const results = await mapLimit(replicas, 8, async (r) => {
      for (let off = 0; off < r.length; off += ZERO_STEP) {
        ctx.checkAbort(j);
        const len = Math.min(ZERO_STEP, r.length - off);
        await path.zero(r.data, volume.id, r.segment, r.idSlot, j.epoch, off, len);
        j.done += len;
      }
      await path.flush(r.data, volume.id, r.segment, r.idSlot, j.epoch);
    });
    const failed = results.find((r) => r.status === 'rejected') as PromiseRejectedResult | undefined;
    if (failed) throw failed.reason;
  } finally {
    await path.close();
  }
}
