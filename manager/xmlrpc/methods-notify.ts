import { GiB } from '../../shared/constants.js';
import { markChunksBad } from '../bad-chunks.js';
import { haltCluster } from '../halt.js';
import { moduleLogger } from '../../shared/logger.js';
import { forEachReplica, holderEpoch, type DiskRecord, type VolumeRecord } from '../types.js';
import type { Method, XmlRpcContext } from './context.js';
import { XmlRpcFaultError, errnoFault, internalFault, mapErrors } from './faults.js';
import { idValue, isInt, mand } from './params.js';

// Failure reports (notifyFailure, notifyBadBlocks) and shutdownAll. A disk or
// server reported gone takes the same path as `vsky disk fail` / `vsky server
// fail`; a disk extent (or bad blocks) under an attached volume's replica takes
// the path a head's failed write takes (ReportReplicaFailure, made on behalf
// of the lease holder): the replica becomes stale and is rebuilt elsewhere.

const log = moduleLogger('manager.xmlrpc');

/** VastSky's TARGET. */
export const TARGET = { HSVR: 1, SSVR: 2, PDSK: 3, LVOL: 4 } as const;

interface ReplicaAt { volume: VolumeRecord; segment: number; idSlot: number; state: string }

/** The replicas (not drain targets) on these chunks of a disk. */
function replicasOn(ctx: XmlRpcContext, diskId: string, chunks: (i: number) => boolean): ReplicaAt[] {
  const out: ReplicaAt[] = [];
  for (const { volume, map } of ctx.core.volumes.entries()) {
    if (!map.disks.includes(diskId)) continue;
    forEachReplica(map, (r) => {
      if (!r.move && r.diskId === diskId && chunks(r.chunkIndex)) out.push({ volume, segment: r.segment, idSlot: r.idSlot, state: r.state });
    });
  }
  return out;
}

/**
 * Marks an in-sync replica of an attached volume stale the way its holder
 * would. Detached volumes are left as VastSky leaves them (their disk extent
 * is rebuilt only when attached); returns whether it marked one.
 */
async function failReplica(ctx: XmlRpcContext, r: ReplicaAt, reason: string): Promise<boolean> {
  const epoch = holderEpoch(r.volume);
  if (r.state !== 'in_sync' || epoch === undefined) return false;
  await mapErrors(() => ctx.core.failures.reportReplicaFailure({
    headId: r.volume.attachedHead, volume: r.volume.name, segment: r.segment, slot: r.idSlot, epoch, reason,
  }), { ECONFLICT: 'EBUSY', ESTALE_EPOCH: 'EAGAIN' });
  return true;
}

async function failHead(ctx: XmlRpcContext, id: number): Promise<void> {
  const head = ctx.ids.head(id);
  if (!head) return;
  // VastSky drops the head's attach rows; ours are detached with force (the next attach fences the head).
  for (const v of ctx.core.volumes.list()) {
    if (v.attachedHead === head.id) await mapErrors(() => ctx.core.attachments.detach(v.name, true), { ECONFLICT: 'EAGAIN' });
    else if (v.standbyHead === head.id) await mapErrors(() => ctx.core.attachments.detachStandby(v.name, true), { ECONFLICT: 'EAGAIN' });
  }
  log.warn({ head: head.name, hsvrid: id }, 'notifyFailure: head server reported gone; its volumes are detached');
}

const notifyFailure: Method = async (ctx, data) => {
  mand(data, 'target', 'targetid');
  const target = data.target;
  if (!isInt(target) || target < TARGET.HSVR || target > TARGET.LVOL) throw errnoFault('EINVAL', 'target must be 1 (hsvr), 2 (ssvr), 3 (pdsk) or 4 (lvol: a disk extent id)');
  const id = idValue(data.targetid) ?? -1;
  const reason = `notifyFailure over XML-RPC (target ${target}, targetid ${id})`;
  const { failures } = ctx.core;
  // Unknown (or removed) ids of heads, servers and disks are not an error, as in VastSky.
  if (target === TARGET.HSVR) await failHead(ctx, id);
  if (target === TARGET.SSVR) {
    const s = ctx.ids.server(id);
    if (s && !s.adminFailed) await failures.failServer(s.id, reason);
  }
  if (target === TARGET.PDSK) {
    const d = ctx.ids.disk(id);
    if (d && !d.adminFailed) await failures.failDisk(d.id, reason);
  }
  if (target === TARGET.LVOL) {
    const dext = ctx.ids.dext(id);
    if (!dext) throw errnoFault('ENOENT', `no disk extent ${id}`);
    for (const r of replicasOn(ctx, dext.disk.id, (i) => i === dext.chunkIndex)) await failReplica(ctx, r, reason);
  }
  return 0;
};

/** Chunk indexes of a disk under 1 GB blocks (VastSky's bad-block numbers are GB offsets). */
function chunksUnder(d: DiskRecord, blocks: number[]): Set<number> {
  const out = new Set<number>();
  for (const b of blocks) {
    const first = Math.floor((b * GiB) / d.chunkSize);
    const last = Math.min(d.chunkCount, Math.ceil(((b + 1) * GiB) / d.chunkSize)) - 1;
    for (let i = first; i <= last; i++) out.add(i);
  }
  return out;
}

const notifyBadBlocks: Method = async (ctx, data) => {
  mand(data, 'pdskid', 'blocks');
  const id = idValue(data.pdskid);
  const d = id === undefined ? undefined : ctx.ids.disk(id);
  if (!d) throw internalFault(`no disk with pdskid ${String(data.pdskid)}`); // VastSky: a NoneType error, 500
  const blocks = data.blocks;
  if (!Array.isArray(blocks) || !blocks.every((b): b is number => isInt(b) && b >= 0)) {
    throw errnoFault('EINVAL', 'blocks must be an array of GB offsets on the disk (ints >= 0)');
  }
  if (d.state === 'failed') return 0;
  const chunks = chunksUnder(d, blocks);
  // Every chunk under the blocks is bad from now on: a free one is never handed out, an owned one once its volume lets it go.
  const bad = await markChunksBad(ctx.core.store, ctx.core.model, d, chunks, `notifyBadBlocks over XML-RPC: blocks ${blocks.join(',')} of disk ${d.path}`);
  if (bad.added.length > 0) ctx.core.registry.badChunksChanged(d);
  let marked = 0;
  const kept: string[] = [];
  for (const r of replicasOn(ctx, d.id, (i) => chunks.has(i))) {
    try {
      if (await failReplica(ctx, r, `notifyBadBlocks over XML-RPC: blocks ${blocks.join(',')} of disk ${d.path}`)) marked++;
    } catch (err) {
      // The last in-sync copy of its segment stays (a stale mark would leave nothing to read); the others go on.
      if (!(err instanceof XmlRpcFaultError)) throw err;
      kept.push(`${r.volume.name}/${r.segment}`);
    }
  }
  log.warn({ diskId: d.id, path: d.path, blocks, chunks: chunks.size, newlyBad: bad.added.length, freeChunksRetired: bad.freeNow, replicasMarkedStale: marked, lastCopiesKept: kept }, 'notifyBadBlocks');
  return 0;
};

/** VastSky's shutdownAll: with nothing attached, every server and head is halted so powering them off raises no failure (manager/halt.ts). */
const shutdownAll: Method = async (ctx) => {
  const attached = ctx.core.volumes.list().filter((v) => v.attachedHead || v.standbyHead);
  if (attached.length > 0) throw errnoFault('EBUSY', `volumes are attached: ${attached.slice(0, 10).map((v) => v.name).join(', ')}`);
  await haltCluster(ctx.core.store, ctx.core.registry, 'shutdownAll over XML-RPC: the cluster may be powered off; each server and head leaves the halt when it registers again');
  return 0;
};

export const notifyMethods: Record<string, Method> = { notifyFailure, notifyBadBlocks, shutdownAll };
