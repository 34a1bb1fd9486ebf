import type { DiskInfo__Output } from '../proto/generated/vsky/storage/DiskInfo.js';
import type { DiskIntIds } from '../proto/generated/vsky/manager/DiskIntIds.js';
import type { IntIdCounters } from '../proto/generated/vsky/common/IntIdCounters.js';
import type { DiskRecord, HeadRecord, ServerRecord } from './types.js';

// The VastSky-style integer ids (manager/xmlrpc/ids.ts) travel both ways:
//  - out: heartbeat replies tell a storage node its ssvrid, its disks'
//    pdskids and extent ids, and the id counters, and tell a head its
//    hsvrid; they keep them (storage-node/int-ids.ts, head-agent/int-id.ts);
//  - back: registrations report them. A record without an id (a manager
//    rebuilt from storage, or a head that was deleted) notes what was
//    reported as a claim, and the next id pass adopts it if no other record
//    holds it (manager/xmlrpc/ids.ts; else a fresh id and an event).
// Ids reported under another cluster id are not claimed.

/** A valid extent id list: pairs [first id >= 1, count >= 1]. */
function dextPairs(ids: number[]): number[] | undefined {
  if (ids.length === 0 || ids.length % 2 !== 0) return undefined;
  for (let i = 0; i < ids.length; i += 2) if (!(ids[i]! >= 1 && ids[i + 1]! >= 1)) return undefined;
  return [...ids];
}

/** Notes the ssvrid a node reports; true if the record changed. */
export function claimServerId(s: ServerRecord, ssvrid: number, idsCluster: string, clusterId: string): boolean {
  if (s.intId !== undefined || ssvrid <= 0 || !clusterId || idsCluster !== clusterId || s.claimedIntId === ssvrid) return false;
  s.claimedIntId = ssvrid;
  return true;
}

/** Notes the pdskid and extent ids a node reports for a disk of this cluster. */
export function claimDiskIds(d: DiskRecord, info: Pick<DiskInfo__Output, 'pdskid' | 'dextIds' | 'clusterId'>, clusterId: string): void {
  if (d.intId !== undefined || info.pdskid <= 0 || !clusterId || info.clusterId !== clusterId) return;
  d.claimedIntId = info.pdskid;
  const pairs = dextPairs(info.dextIds);
  if (pairs) d.claimedDextIds = pairs;
  else delete d.claimedDextIds;
}

/** Notes the hsvrid a head reports. */
export function claimHeadId(h: HeadRecord, hsvrid: number, idsCluster: string, clusterId: string): void {
  if (h.intId === undefined && hsvrid > 0 && clusterId && idsCluster === clusterId) h.claimedIntId = hsvrid;
}

/** What a heartbeat reply tells a storage node about its ids. */
export function serverIdsReply(registry: { disksOf(serverId: string): DiskRecord[]; server(id: string): ServerRecord | undefined }, serverId: string, clusterId: string, next: IntIdCounters | undefined):
  { intId: number; diskIntIds: DiskIntIds[]; nextIntIds: IntIdCounters | undefined; clusterId: string } {
  const diskIntIds = registry.disksOf(serverId).filter((d) => d.intId !== undefined && d.state !== 'removed')
    .map((d) => ({ diskId: d.id, pdskid: d.intId!, dextIds: d.dextIds ?? [] }));
  return { intId: registry.server(serverId)?.intId ?? 0, diskIntIds, nextIntIds: next, clusterId };
}
