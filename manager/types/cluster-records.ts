// Who is in the cluster: the manager's records of servers, disks and heads.
// (manager/types.ts says what leaves this folder.)

export type ServerState = 'active' | 'failed' | 'removed';
export type DiskState = 'active' | 'failed' | 'removed';
export type HeadState = 'active' | 'failed';
export interface ServerRecord {
  id: string;
  name: string;
  dataAddress: string;
  controlAddress: string;
  /** Labels the node reports about itself (its config). */
  nodeLabels: Record<string, string>;
  /** Labels an admin gave with AddServer; they win over the node's. */
  adminLabels: Record<string, string>;
  state: ServerState;
  stateReason: string;
  /** Failed by an admin (FailServer): heartbeats do not revive it; AddServer does. */
  adminFailed?: boolean;
  registeredMs: number;
  /** Last heartbeat seen; persisted only when the state changes. */
  lastHeartbeatMs: number;
  /** A graceful RemoveServer drains its disks; the server is removed when the last one is. */
  draining?: boolean;
  /** VastSky-style integer id (ssvrid), stable once given (manager/xmlrpc/ids.ts). */
  intId?: number;
  /** The ssvrid the node reported keeping (a rebuilt manager gives it back if free; manager/xmlrpc/ids.ts). */
  claimedIntId?: number;
  /**
   * Halted by XML-RPC shutdownAll (manager/halt.ts): takes no new chunks and is
   * never timed out (it may be powered off); its next registration (node
   * restart, vsky server add) ends it.
   */
  halted?: boolean;
}

export interface DiskRecord {
  id: string;
  serverId: string;
  path: string;
  chunkSize: number;
  /** Bytes per written-region bit (its superblock); absent in records from before 4 KiB regions: chunkSize / 4096. */
  regionSize?: number;
  chunkCount: number;
  state: DiskState;
  stateReason: string;
  addedMs: number;
  /** Failed by an admin (FailDisk): a node reporting it active does not revive it; AddDisk does. */
  adminFailed?: boolean;
  /**
   * Being drained by a graceful RemoveDisk/RemoveServer (manager/resync/drains.ts):
   * takes no new chunks; its replicas are copied elsewhere, each kept in sync
   * until its copy is, then the disk becomes removed. AddDisk cancels it.
   */
  draining?: boolean;
  /** VastSky-style integer id (pdskid), stable once given (manager/xmlrpc/ids.ts). */
  intId?: number;
  /** Disk-extent ids of its chunks, as pairs [first id, count] in chunk order (lvol id space; manager/xmlrpc/ids.ts). */
  dextIds?: number[];
  /** The pdskid and extent ids its node reported keeping (adopted if free; manager/xmlrpc/ids.ts). */
  claimedIntId?: number;
  claimedDextIds?: number[];
  /**
   * Chunk indexes reported bad (XML-RPC notifyBadBlocks): never handed out
   * again; one owned now becomes bad when its volume lets it go.
   */
  badChunks?: number[];
}

export interface HeadRecord {
  id: string;
  name: string;
  controlAddress: string;
  nbdAddress: string;
  state: HeadState;
  registeredMs: number;
  lastHeartbeatMs: number;
  /** VastSky-style integer id (hsvrid), stable once given (manager/xmlrpc/ids.ts). */
  intId?: number;
  /** The hsvrid the head reported keeping (adopted if free; manager/xmlrpc/ids.ts). */
  claimedIntId?: number;
  /** Halted by XML-RPC shutdownAll (manager/halt.ts): nothing is attached to it, it is never timed out; its next registration ends it. */
  halted?: boolean;
}
