import { defaultRegionSize } from '../../shared/region-bitmap.js';
import { MAX_VOLUME_ID } from '../placement/model-disk.js';
import { claimDiskIds, claimServerId } from '../int-id-claims.js';
import type { DiskRecord, ServerRecord } from '../types.js';
import { LOST_DISK_ID, LOST_SERVER_ID, few, plural, type DiskSeen, type DiskUse, type Found, type NodeTable, type SetAsideChunk } from './found.js';
import { restoreDiskAdmin, restoreServerAdmin } from './volume-state.js';

// Rule 1 of a rebuild from storage (manager/rebuild/plan.ts): servers and
// disks from the nodes' reports, and every chunk record in its volume's group.

export interface NodesRead {
  servers: ServerRecord[];
  disks: DiskRecord[];
  groups: Map<number, Found[]>;
  chunksRead: number;
  /** Highest volume id seen in this cluster's chunks. */
  maxVolumeId: number;
}

export function readNodes(
  input: { clusterId: string; chunkSize: number; nodes: NodeTable[]; nowMs: number },
  setAside: SetAsideChunk[], conflicts: string[],
): NodesRead {
  const { clusterId, chunkSize, nowMs } = input;
  const servers: ServerRecord[] = [];
  const disks: DiskRecord[] = [];
  let chunksRead = 0;
  let maxVolumeId = 0;
  // Rule 1: servers, disks, and every chunk in its volume's group.
  const serverIds = new Set<string>();
  const diskById = new Map<string, DiskSeen>();
  const groups = new Map<number, Found[]>();
  /** Disks whose chunks are set aside, with how many (one conflict line each). */
  const asideByDisk = new Map<string, number>();
  for (const node of input.nodes) {
    const info = node.server;
    chunksRead += node.chunks.length;
    const sid = info.serverId;
    if (!sid || sid === LOST_SERVER_ID || serverIds.has(sid)) {
      conflicts.push(`server ${info.name || '?'} (id "${sid}"): ${!sid ? 'no server id' : sid === LOST_SERVER_ID ? 'its id is the placeholder id' : 'id reported by two nodes'}; `
        + `its ${plural(info.disks.length, 'disk')} and ${plural(node.chunks.length, 'chunk')} are ignored`);
      continue;
    }
    serverIds.add(sid);
    const srec: ServerRecord = {
      id: sid, name: info.name || sid, dataAddress: info.dataAddress, controlAddress: info.controlAddress,
      nodeLabels: { ...(info.labels ?? {}) }, adminLabels: {}, state: 'active', stateReason: 'rebuilt from storage',
      registeredMs: nowMs, lastHeartbeatMs: nowMs,
    };
    claimServerId(srec, info.ssvrid ?? 0, info.intIdsClusterId ?? '', clusterId);
    restoreServerAdmin(srec, info.note);
    servers.push(srec);
    for (const d of info.disks) {
      if (!d.diskId || d.diskId === LOST_DISK_ID || diskById.has(d.diskId)) {
        conflicts.push(`disk ${d.path} of server ${info.name || sid} (id "${d.diskId}"): ${!d.diskId ? 'no disk id' : d.diskId === LOST_DISK_ID ? 'its id is the placeholder id' : 'id reported twice'}; ignored with its chunks`);
        continue;
      }
      let use: DiskUse = 'ok';
      let why = '';
      let reason = 'rebuilt from storage';
      let adminFailed = false;
      if (clusterId && d.clusterId && d.clusterId !== clusterId) {
        use = 'aside';
        adminFailed = true;
        why = `disk ${d.diskId} belongs to cluster ${d.clusterId}, not ${clusterId}`;
        reason = `belongs to cluster ${d.clusterId} (rebuild from storage)`;
      } else if (d.chunkSize !== chunkSize) {
        use = 'aside';
        why = `disk ${d.diskId} has chunk size ${d.chunkSize}, the cluster's is ${chunkSize}`;
        reason = `chunk size ${d.chunkSize} differs from the cluster's ${chunkSize}`;
      } else if (d.state === 'failed') {
        use = 'failed';
        reason = 'its node reports it failed (rebuild from storage)';
      }
      const rec: DiskRecord = {
        id: d.diskId, serverId: sid, path: d.path, chunkSize: d.chunkSize, regionSize: Number(d.regionSize) || defaultRegionSize(d.chunkSize), chunkCount: d.chunkCount,
        state: use === 'ok' ? 'active' : 'failed', stateReason: reason, addedMs: nowMs,
      };
      if (adminFailed) rec.adminFailed = true;
      else claimDiskIds(rec, { pdskid: d.pdskid ?? 0, dextIds: d.dextIds ?? [], clusterId: d.clusterId }, clusterId);
      if (use !== 'aside') {
        // An admin's decision its node keeps (failed: its chunks are stale replicas; draining: the drain resumes).
        restoreDiskAdmin(rec, d);
        if (rec.state === 'failed') use = 'failed';
      }
      disks.push(rec);
      diskById.set(d.diskId, { rec, use, why, foreign: adminFailed, indices: new Set() });
      if (use === 'aside') asideByDisk.set(d.diskId, 0);
    }
    // A server being removed by an admin: every disk of it draining for that reason (Decommission.removeServer).
    const drainsAll = info.disks.length > 0 && info.disks.every((d) => d.note?.adminState === 'draining' && (d.note.reason ?? '').startsWith(`server ${info.name} removed`));
    if (drainsAll) srec.draining = true;
    // Chunks skipped, by why (one conflict line per node and why).
    const skipped = new Map<string, string[]>();
    const skip = (why: string, c: { diskId: string; chunkIndex: number }) => {
      const where = `${c.diskId}#${c.chunkIndex}`;
      const list = skipped.get(why);
      if (list) list.push(where);
      else skipped.set(why, [where]);
    };
    for (const c of node.chunks) {
      const disk = diskById.get(c.diskId);
      if (!disk || disk.rec.serverId !== sid) { skip('on a disk the node does not report', c); continue; }
      if (!(Number.isInteger(c.chunkIndex) && c.chunkIndex >= 0 && c.chunkIndex < disk.rec.chunkCount)) { skip('index beyond the disk', c); continue; }
      if (disk.indices.has(c.chunkIndex)) { skip('listed twice', c); continue; }
      disk.indices.add(c.chunkIndex);
      const id = c.identity;
      if (!id || !(Number.isInteger(id.volumeId) && id.volumeId >= 1 && id.volumeId <= MAX_VOLUME_ID)) { skip('no valid volume id', c); continue; }
      if (disk.use === 'aside') {
        setAside.push({ diskId: c.diskId, chunkIndex: c.chunkIndex, volumeId: id.volumeId, reason: disk.why });
        asideByDisk.set(c.diskId, (asideByDisk.get(c.diskId) ?? 0) + 1);
        if (!disk.foreign) maxVolumeId = Math.max(maxVolumeId, id.volumeId);
        continue;
      }
      maxVolumeId = Math.max(maxVolumeId, id.volumeId);
      const f: Found = {
        diskId: c.diskId, chunkIndex: c.chunkIndex, volumeId: id.volumeId,
        name: id.volumeName, size: id.volumeSize, replicas: id.replicas, segmentCount: id.segmentCount,
        segment: id.segment, idSlot: id.slot, generation: id.generation, epoch: id.epoch,
        staleSlots: id.staleSlots >>> 0, mapVersion: id.mapVersion, written: c.writtenRegions, lvolid: id.lvolid ?? 0,
        legality: id.legality || 'LEGAL', jobId: id.jobId ?? '', jobKind: id.jobKind ?? '', jobOutcome: id.jobOutcome ?? '',
        readable: disk.use === 'ok', inSync: false, thin: id.thin === true, readOnly: id.readOnly === true,
      };
      const group = groups.get(f.volumeId);
      if (group) group.push(f);
      else groups.set(f.volumeId, [f]);
    }
    for (const [why, what] of skipped) conflicts.push(`server ${info.name || sid}: ${plural(what.length, 'chunk')} ${why} (${few(what)}); not placed, not freed`);
  }
  for (const [diskId, n] of asideByDisk) conflicts.push(`${diskById.get(diskId)!.why}: the disk is failed; its ${plural(n, 'chunk')} are set aside`);
  return { servers, disks, groups, chunksRead, maxVolumeId };
}
