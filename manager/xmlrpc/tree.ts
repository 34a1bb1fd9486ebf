import { GiB } from '../../shared/constants.js';
import { forEachReplica, type ChunkMapRecord, type DiskRecord, type ReplicaState, type ServerRecord, type VolumeRecord } from '../types.js';
import type { XStruct } from './codec.js';

// showLogicalVolume's lvolstruct: VastSky's LVOL > SNAPSHOT-ORIGIN > LINEAR >
// MIRROR > DEXT tree, with our segments as the mirrors (in offset order) and
// the chunks of each segment's replicas as its disk extents. Every node has
// the same 7 members; capacities and offsets are whole GB (GiB), rounded
// down, as VastSky's ints are (a segment smaller than 1 GB shows 0): the
// exact sizes are in extra lvolspec members (size_bytes, offset_bytes).

export const LVOLTYPE = { LVOL: 0, LINEAR: 1, MIRROR: 2, DEXT: 3, SNAPSHOT_ORIGIN: 6, SNAPSHOT: 7 } as const;
export const MIRROR_STATUS = { NONE: 0, ALLOCATED: 1, INSYNC: 2, SPARE: 3, FAULTY: 4 } as const;

/** What the tree needs to know about disks, servers and ids. */
export interface TreeLookup {
  disk(diskId: string): DiskRecord | undefined;
  server(serverId: string): ServerRecord | undefined;
  dextId(disk: DiskRecord | undefined, chunkIndex: number): number;
}

export const gb = (bytes: number): number => Math.floor(bytes / GiB);

/** ctime as VastSky prints it: YYYY-MM-DDThh:mm:ss, UTC. */
export function ctime(ms: number): string {
  return new Date(ms).toISOString().slice(0, 19);
}

/** "lvol-%08x". */
export function lvolLabel(lvolid: number): string {
  return `lvol-${lvolid.toString(16).padStart(8, '0')}`;
}

/**
 * A replica's mirror_status: in sync is INSYNC, or ALLOCATED while the volume
 * was never attached (epoch 0, VastSky's "never attached"); being rebuilt or
 * a drain's target is SPARE (needs resync); stale (its disk or server failed,
 * or a head failed a write on it) is FAULTY.
 */
export function mirrorStatus(state: ReplicaState, move: boolean, neverAttached: boolean): number {
  if (move || state === 'resyncing') return MIRROR_STATUS.SPARE;
  if (state === 'stale') return MIRROR_STATUS.FAULTY;
  return neverAttached ? MIRROR_STATUS.ALLOCATED : MIRROR_STATUS.INSYNC;
}

function node(lvolid: number, lvoltype: number, capacity: number, components: XStruct[], lvolspec: XStruct = {}, mirrorStatusValue = 0, labels: string[] = []): XStruct {
  return { lvolid, lvoltype, capacity, mirror_status: mirrorStatusValue, lvolspec, labels, components };
}

/** The DEXT nodes of every segment, in segment order (a drain target follows the replicas). */
function dexts(v: VolumeRecord, map: ChunkMapRecord, look: TreeLookup): XStruct[][] {
  const bySegment: XStruct[][] = Array.from({ length: map.segmentCount }, () => []);
  const segGb = gb(v.chunkSize);
  forEachReplica(map, (r) => {
    const disk = look.disk(r.diskId);
    const server = disk ? look.server(disk.serverId) : undefined;
    const offsetBytes = r.chunkIndex * v.chunkSize;
    bySegment[r.segment]!.push(node(look.dextId(disk, r.chunkIndex), LVOLTYPE.DEXT, segGb, [], {
      pdskid: disk?.intId ?? 0, offset: gb(offsetBytes), ssvrid: server?.intId ?? 0,
      iscsi_path: server ? [`vsky-data://${server.dataAddress}/${r.diskId}/${r.chunkIndex}`] : [],
      // ours:
      disk_id: r.diskId, chunk_index: r.chunkIndex, offset_bytes: offsetBytes, size_bytes: v.chunkSize,
      slot: r.slot, state: r.move ? 'drain_target' : r.state,
    }, mirrorStatus(r.state, r.move, v.epoch === 0)));
  });
  return bySegment;
}

/** The whole lvolstruct of a volume that has an lvolid. */
export function volumeTree(v: VolumeRecord, map: ChunkMapRecord, look: TreeLookup): XStruct {
  const lvolid = v.intId ?? 0;
  const capacity = gb(v.size);
  const mirrors = dexts(v, map, look).map((components, segment) => {
    const offsetBytes = segment * v.chunkSize;
    const sizeBytes = Math.min(v.chunkSize, v.size - offsetBytes);
    return node(lvolid + 3 + segment, LVOLTYPE.MIRROR, gb(sizeBytes), components, { segment, offset_bytes: offsetBytes, size_bytes: sizeBytes });
  });
  const linear = node(lvolid + 2, LVOLTYPE.LINEAR, capacity, mirrors);
  const origin = node(lvolid + 1, LVOLTYPE.SNAPSHOT_ORIGIN, capacity, [linear]);
  return node(lvolid, LVOLTYPE.LVOL, capacity, [origin],
    { lvolname: v.name, redundancy: v.replicas, ctime: ctime(v.createdMs), assoc: [], size_bytes: v.size },
    MIRROR_STATUS.NONE, [v.name, lvolLabel(lvolid)]);
}

/** listLogicalVolumes' `fault`: any disk extent neither INSYNC nor ALLOCATED. */
export function hasFault(map: ChunkMapRecord): boolean {
  let fault = false;
  forEachReplica(map, (r) => { if (r.move || r.state !== 'in_sync') fault = true; });
  return fault;
}
