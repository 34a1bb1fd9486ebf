import type { VolumeMap } from '../proto/generated/vsky/common/VolumeMap.js';
import type { SegmentMap } from '../proto/generated/vsky/common/SegmentMap.js';
import type { BackingVolume } from '../proto/generated/vsky/common/BackingVolume.js';
import type { DiskRow } from '../proto/generated/vsky/manager/DiskRow.js';
import type { HeadInfo } from '../proto/generated/vsky/manager/HeadInfo.js';
import type { ServerInfo } from '../proto/generated/vsky/manager/ServerInfo.js';
import type { VolumeInfo } from '../proto/generated/vsky/manager/VolumeInfo.js';
import type { PlacementModel } from './placement.js';
import type { Registry } from './registry.js';
import { allocatedSegments, forEachReplica, type ChunkMapRecord, type DiskRecord, type HeadRecord, type ServerRecord, type VolumeRecord } from './types.js';

// Records -> wire messages (proto/manager.proto, proto/common.proto).

export function serverView(s: ServerRecord, registry: Registry): ServerInfo {
  return {
    serverId: s.id, name: s.name, dataAddress: s.dataAddress, controlAddress: s.controlAddress,
    labels: registry.labelsOf(s), state: s.state, lastHeartbeatMs: s.lastHeartbeatMs,
    diskCount: registry.disksOf(s.id).filter((d) => d.state !== 'removed').length,
    draining: Boolean(s.draining && s.state !== 'removed'), ssvrid: s.intId ?? 0,
  };
}

/** `drainNote`: why a draining disk waits (manager/resync/drains.ts), if it does. */
export function diskView(d: DiskRecord, registry: Registry, model: PlacementModel, drainNote = ''): DiskRow {
  return {
    diskId: d.id, serverId: d.serverId, serverName: registry.server(d.serverId)?.name ?? '', path: d.path,
    chunkSize: d.chunkSize, chunkCount: d.chunkCount, usedChunks: model.diskUsage(d.id)?.used ?? 0, state: d.state,
    draining: Boolean(d.draining && d.state !== 'removed'), drainNote, stateReason: d.stateReason, pdskid: d.intId ?? 0,
    badChunks: d.badChunks?.length ?? 0,
  };
}

/** `clockOffsetMs`: the head's clock minus the manager's, as it last reported (undefined: not yet). */
export function headView(h: HeadRecord, attached: string[], clockOffsetMs?: number): HeadInfo {
  return {
    clockOffsetMs: clockOffsetMs ?? 0, clockOffsetKnown: clockOffsetMs !== undefined,
    headId: h.id, name: h.name, controlAddress: h.controlAddress, nbdAddress: h.nbdAddress,
    state: h.state, lastHeartbeatMs: h.lastHeartbeatMs, attached, hsvrid: h.intId ?? 0,
  };
}

/** How far a volume is from full redundancy (manager/resync/resyncs.ts `health`). */
export interface VolumeHealth {
  degraded: boolean;
  resyncs: number;
  /** 0..1 over the volume's queued and running resyncs. */
  progress: number;
}

/** `attached_head` carries the head's name (what an admin types), or its id if the head is unknown. */
export function volumeView(v: VolumeRecord, registry: Registry, health?: VolumeHealth, lease?: { lease: string; renewedAgoMs: number },
  map?: ChunkMapRecord): VolumeInfo {
  const allocated = map ? allocatedSegments(map) : v.segmentCount;
  const headName = (id: string | undefined): string => (id ? (registry.head(id)?.name ?? id) : '');
  return {
    standbyHead: headName(v.standbyHead), standbyNbdUri: v.standbyNbdUri ?? '', standbyIscsiUrl: v.standbyIscsiUrl ?? '',
    lease: lease?.lease ?? (v.attachedHead ? 'held' : 'free'), leaseRenewedMsAgo: lease?.renewedAgoMs ?? 0,
    degraded: health?.degraded ?? false, resyncs: health?.resyncs ?? 0, resyncProgress: health?.progress ?? 0,
    volumeId: v.id, name: v.name, size: v.size, replicas: v.replicas, chunkSize: v.chunkSize,
    segmentCount: v.segmentCount, state: v.attachedHead ? 'attached' : 'available', generation: v.generation,
    epoch: v.epoch, attachedHead: headName(v.attachedHead),
    nbdUri: v.nbdUri, createdMs: v.createdMs, iscsiUrl: v.iscsiUrl ?? '',
    iscsiInitiators: v.access?.initiators ?? [], iscsiChap: Boolean(v.access?.chapUser),
    iscsiMutualChap: Boolean(v.access?.mutualUser), lvolid: v.intId ?? 0,
    thin: v.thin === true, allocatedSegments: allocated, allocatedBytes: Math.min(allocated * v.chunkSize, v.size),
    // One copy: the replicas' written bytes over K (a drain target or a resync in progress adds to it for a while).
    writtenBytes: Math.min(Math.round(registry.writtenBytes(v.id) / v.replicas), v.size),
    legality: v.dirty ? 'DIRTY' : 'LEGAL', dirtyJob: v.dirty ? `${v.dirty.kind} job ${v.dirty.jobId} ${v.dirty.state}` : '',
    ...lineageView(v),
  };
}

/**
 * How views find the volumes behind a clone or snapshotted volume (set once
 * by the manager core: every map it sends carries the backing chain).
 */
export interface BackingLookup {
  byVolumeId(id: number): { volume: VolumeRecord; map: ChunkMapRecord } | undefined;
  dependents(id: number): VolumeRecord[];
}
let backingLookup: BackingLookup | undefined;
export function setBackingLookup(lookup: BackingLookup | undefined): void {
  backingLookup = lookup;
}

/** Snapshot/clone fields of VolumeInfo (names, not ids). */
function lineageView(v: VolumeRecord): { kind: string; origin: string; backing: string; dependents: string[] } {
  const nameOf = (id: number | undefined) => (id === undefined ? '' : backingLookup?.byVolumeId(id)?.volume.name ?? '');
  return {
    kind: v.kind ?? 'volume', origin: nameOf(v.origin), backing: nameOf(v.backing),
    dependents: backingLookup?.dependents(v.id).map((d) => d.name).sort() ?? [],
  };
}

/** The backing chain of a volume, nearest first (docs/snapshots.md). */
function backingView(v: VolumeRecord, registry: Registry): BackingVolume[] {
  const out: BackingVolume[] = [];
  let id = v.backing;
  while (id !== undefined && backingLookup !== undefined && out.length < 256) {
    const e = backingLookup.byVolumeId(id);
    if (e === undefined) break;
    out.push({ volumeId: e.volume.id, name: e.volume.name, size: e.volume.size, segments: segmentsView(e.map, registry), backed: e.volume.backing !== undefined });
    id = e.volume.backing;
  }
  return out;
}

/** What a head needs to assemble the volume: every segment's replica locations, and its backing chain. */
export function volumeMapView(v: VolumeRecord, map: ChunkMapRecord, registry: Registry): VolumeMap {
  return {
    volumeId: v.id, name: v.name, size: v.size, chunkSize: v.chunkSize, replicas: v.replicas,
    generation: v.generation, segments: segmentsView(map, registry), thin: map.thin === true, backing: backingView(v, registry),
    regionSize: registry.regionSize(),
  };
}

function segmentsView(map: ChunkMapRecord, registry: Registry): SegmentMap[] {
  const segments: SegmentMap[] = [];
  for (let i = 0; i < map.segmentCount; i++) segments.push({ index: i, replicas: [] }); // unallocated (thin) ones stay empty
  const serverOf = new Map<string, ServerRecord | undefined>();
  for (const diskId of map.disks) serverOf.set(diskId, registry.serverOfDisk(diskId));
  forEachReplica(map, (r) => {
    const server = serverOf.get(r.diskId);
    segments[r.segment]!.replicas!.push({
      slot: r.idSlot, serverId: server?.id ?? '', dataAddress: server?.dataAddress ?? '', diskId: r.diskId,
      chunkIndex: r.chunkIndex, state: r.state, controlAddress: server?.controlAddress ?? '',
    });
  });
  return segments;
}
