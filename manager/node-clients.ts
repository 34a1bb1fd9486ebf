import {
  call, headAgentClient, storageNodeClient, type HeadAgentClient, type StorageNodeClient,
} from '../shared/grpc.js';
import type { ResyncTask } from '../proto/generated/vsky/common/ResyncTask.js';
import type { AttachVolumeReply__Output } from '../proto/generated/vsky/head/AttachVolumeReply.js';
import type { AttachVolumeRequest } from '../proto/generated/vsky/head/AttachVolumeRequest.js';
import type { DetachVolumeRequest } from '../proto/generated/vsky/head/DetachVolumeRequest.js';
import type { AttachedList__Output } from '../proto/generated/vsky/head/AttachedList.js';
import type { ReleaseLeaseRequest } from '../proto/generated/vsky/head/ReleaseLeaseRequest.js';
import type { RunJobRequest } from '../proto/generated/vsky/head/RunJobRequest.js';
import type { DiskNote } from '../proto/generated/vsky/storage/DiskNote.js';
import type { ForgetDeletedVolumesRequest } from '../proto/generated/vsky/storage/ForgetDeletedVolumesRequest.js';
import type { ServerNote } from '../proto/generated/vsky/storage/ServerNote.js';
import type { MarkVolumeDeletingRequest } from '../proto/generated/vsky/storage/MarkVolumeDeletingRequest.js';
import type { VolumeNote } from '../proto/generated/vsky/storage/VolumeNote.js';
import type { SegmentNote } from '../proto/generated/vsky/storage/SegmentNote.js';
import type { SetVolumeStateRequest } from '../proto/generated/vsky/storage/SetVolumeStateRequest.js';
import type { AddDiskRequest } from '../proto/generated/vsky/storage/AddDiskRequest.js';
import type { AllocateChunkRequest } from '../proto/generated/vsky/storage/AllocateChunkRequest.js';
import type { ChunkList__Output } from '../proto/generated/vsky/storage/ChunkList.js';
import type { ChunkRef } from '../proto/generated/vsky/storage/ChunkRef.js';
import type { ChunkRegions__Output } from '../proto/generated/vsky/storage/ChunkRegions.js';
import type { DiskInfo__Output } from '../proto/generated/vsky/storage/DiskInfo.js';
import type { FreeChunkRequest } from '../proto/generated/vsky/storage/FreeChunkRequest.js';
import type { ListChunksRequest } from '../proto/generated/vsky/storage/ListChunksRequest.js';
import type { NodeInfo__Output } from '../proto/generated/vsky/storage/NodeInfo.js';
import type { ReassignChunkRequest } from '../proto/generated/vsky/storage/ReassignChunkRequest.js';
import type { QuiesceVolumeRequest } from '../proto/generated/vsky/head/QuiesceVolumeRequest.js';
import type { RemoveDiskRequest } from '../proto/generated/vsky/storage/RemoveDiskRequest.js';

// The manager's view of its peers: storage nodes and head agents, addressed
// by their control (gRPC) address. The rest of the manager talks to peers
// only through these two interfaces, so tests can swap in fakes; the real
// implementation keeps one gRPC client per address and maps errors to typed
// VskyErrors (shared/grpc.ts `call`).

export interface StorageNodeApi {
  getInfo(address: string): Promise<NodeInfo__Output>;
  addDisk(address: string, req: AddDiskRequest): Promise<DiskInfo__Output>;
  removeDisk(address: string, req: RemoveDiskRequest): Promise<void>;
  /** `timeoutMs` defaults to PEER_TIMEOUTS.chunk. */
  allocateChunk(address: string, req: AllocateChunkRequest, timeoutMs?: number): Promise<void>;
  freeChunk(address: string, req: FreeChunkRequest): Promise<void>;
  listChunks(address: string, req: ListChunksRequest): Promise<ChunkList__Output>;
  /** Written-region and write-intent bitmaps of one chunk (resync sizing). */
  getChunkRegions(address: string, req: ChunkRef): Promise<ChunkRegions__Output>;
  /** Starts a peer-to-peer resync into a chunk of this node (detached volumes); returns once accepted. */
  copyChunk(address: string, task: ResyncTask): Promise<void>;
  /** The manager's note on a segment (which replicas are stale), durable on the node when this resolves. */
  noteSegment(address: string, req: SegmentNote, timeoutMs: number): Promise<void>;
  /** Storage jobs: the epoch-checked generation compare-and-set over the volume's chunks there (durable when it resolves); returns the chunks set. */
  setVolumeState?(address: string, req: SetVolumeStateRequest): Promise<number>;
  /** The volume's note (access rules) kept by the node, durable when it resolves (manager/storage-notes.ts). */
  keepVolumeNote?(address: string, req: VolumeNote): Promise<void>;
  /** A delete's first step: the volume's chunks there marked DELETING, durable when it resolves; returns the chunks. */
  markVolumeDeleting?(address: string, req: MarkVolumeDeletingRequest): Promise<number>;
  /** An admin's decision on a disk (and its bad chunks) kept by its node. */
  keepDiskNote?(address: string, req: DiskNote): Promise<void>;
  /** Drops the node's tombstones of these deleted volumes (every chunk of them was freed). */
  forgetDeletedVolumes?(address: string, req: ForgetDeletedVolumesRequest): Promise<void>;
  /** An admin's decision on a server kept by its node. */
  keepServerNote?(address: string, req: ServerNote): Promise<void>;
  /** Snapshots: a chunk takes another volume's identity (durable when it resolves). */
  reassignChunk?(address: string, req: ReassignChunkRequest): Promise<void>;
}

export interface HeadApi {
  attach(address: string, req: AttachVolumeRequest): Promise<AttachVolumeReply__Output>;
  detach(address: string, req: DetachVolumeRequest): Promise<void>;
  /** New replica states/locations of an attached volume, same epoch. */
  updateMap(address: string, req: AttachVolumeRequest): Promise<void>;
  /** Starts a resync of an attached volume on its head; returns once accepted. */
  startResync(address: string, task: ResyncTask): Promise<void>;
  /** Drain, flush and give up the write lease (a hand-off); bounded by `timeoutMs`. */
  releaseLease(address: string, req: ReleaseLeaseRequest, timeoutMs: number): Promise<void>;
  /** Snapshot of an attached volume: pause (or resume) its I/O on the holder. */
  quiesceVolume?(address: string, req: QuiesceVolumeRequest, timeoutMs: number): Promise<void>;
  /** Flatten an attached volume on its holder (copies its backing's regions); returns bytes copied. */
  flattenVolume?(address: string, req: QuiesceVolumeRequest, timeoutMs: number): Promise<number>;
  /** Hands a storage job that moves data (copy) to the head; returns once accepted. */
  runJob?(address: string, req: RunJobRequest): Promise<void>;
  /** The volumes the head has attached, with their sizes (an online resize checks what a refusing head kept). */
  listAttached?(address: string): Promise<AttachedList__Output>;
}

export interface PeerClients {
  readonly node: StorageNodeApi;
  readonly head: HeadApi;
  close(): void;
}

/** Deadlines per call kind (ms). Attach is long: the head connects to and fences every replica. */
/** Peers may be restarting: wait for their channel (within the deadline) rather than fail on a stale backoff. */
const PEER_CALL = { waitForReady: true };

export const PEER_TIMEOUTS = {
  info: 5_000,
  disk: 60_000,
  chunk: 10_000,
  list: 30_000,
  attach: 30_000,
  detach: 30_000,
  /** --force: the head may be hung or gone; do not wait long for it. */
  detachForce: 3_000,
  /** UpdateMap, StartResync, CopyChunk: the peer only takes note (the copy runs in the background). */
  resync: 5_000,
  /** SetVolumeState, MarkVolumeDeleting, Keep*Note: record writes on the node; a node that is gone is given up on after this (a wipe leaves it out). */
  volumeState: 10_000,
};

export class GrpcPeerClients implements PeerClients {
  private readonly nodes = new Map<string, StorageNodeClient>();
  private readonly heads = new Map<string, HeadAgentClient>();

  readonly node: StorageNodeApi = {
    getInfo: (a) => call(this.nodeClient(a), this.nodeClient(a).GetInfo, {}, PEER_TIMEOUTS.info, PEER_CALL),
    addDisk: (a, req) => call(this.nodeClient(a), this.nodeClient(a).AddDisk, req, PEER_TIMEOUTS.disk, PEER_CALL),
    removeDisk: async (a, req) => { await call(this.nodeClient(a), this.nodeClient(a).RemoveDisk, req, PEER_TIMEOUTS.disk, PEER_CALL); },
    reassignChunk: async (a, req) => { await call(this.nodeClient(a), 'ReassignChunk', req, PEER_TIMEOUTS.chunk, PEER_CALL); },
    allocateChunk: async (a, req, timeoutMs) => { await call(this.nodeClient(a), this.nodeClient(a).AllocateChunk, req, timeoutMs ?? PEER_TIMEOUTS.chunk, PEER_CALL); },
    freeChunk: async (a, req) => { await call(this.nodeClient(a), this.nodeClient(a).FreeChunk, req, PEER_TIMEOUTS.chunk, PEER_CALL); },
    listChunks: (a, req) => call(this.nodeClient(a), this.nodeClient(a).ListChunks, req, PEER_TIMEOUTS.list, PEER_CALL),
    getChunkRegions: (a, req) => call(this.nodeClient(a), 'GetChunkRegions', req, PEER_TIMEOUTS.info, PEER_CALL),
    copyChunk: async (a, task) => { await call(this.nodeClient(a), 'CopyChunk', task, PEER_TIMEOUTS.resync, PEER_CALL); },
    noteSegment: async (a, req, timeoutMs) => { await call(this.nodeClient(a), 'NoteSegment', req, timeoutMs); },
    setVolumeState: async (a, req) => (await call(this.nodeClient(a), 'SetVolumeState', req, PEER_TIMEOUTS.volumeState, PEER_CALL)).chunks,
    keepVolumeNote: async (a, req) => { await call(this.nodeClient(a), 'KeepVolumeNote', req, PEER_TIMEOUTS.volumeState, PEER_CALL); },
    markVolumeDeleting: async (a, req) => (await call(this.nodeClient(a), 'MarkVolumeDeleting', req, PEER_TIMEOUTS.volumeState, PEER_CALL)).chunks,
    keepDiskNote: async (a, req) => { await call(this.nodeClient(a), 'KeepDiskNote', req, PEER_TIMEOUTS.volumeState, PEER_CALL); },
    forgetDeletedVolumes: async (a, req) => { await call(this.nodeClient(a), 'ForgetDeletedVolumes', req, PEER_TIMEOUTS.volumeState, PEER_CALL); },
    keepServerNote: async (a, req) => { await call(this.nodeClient(a), 'KeepServerNote', req, PEER_TIMEOUTS.volumeState, PEER_CALL); },
  };

  readonly head: HeadApi = {
    attach: (a, req) => call(this.headClient(a), this.headClient(a).Attach, req, PEER_TIMEOUTS.attach, PEER_CALL),
    detach: async (a, req) => { await call(this.headClient(a), this.headClient(a).Detach, req, req.force ? PEER_TIMEOUTS.detachForce : PEER_TIMEOUTS.detach, PEER_CALL); },
    updateMap: async (a, req) => { await call(this.headClient(a), 'UpdateMap', req, PEER_TIMEOUTS.resync, PEER_CALL); },
    startResync: async (a, task) => { await call(this.headClient(a), 'StartResync', task, PEER_TIMEOUTS.resync, PEER_CALL); },
    // Not waitForReady: a holder that is gone must fail fast, so the hand-off goes on to wait for its lease to expire.
    releaseLease: async (a, req, timeoutMs) => { await call(this.headClient(a), 'ReleaseLease', req, timeoutMs); },
    flattenVolume: async (a, req, timeoutMs) => Number((await call(this.headClient(a), 'FlattenVolume', req, timeoutMs)).bytesCopied),
    quiesceVolume: async (a, req, timeoutMs) => { await call(this.headClient(a), 'QuiesceVolume', req, timeoutMs); },
    // Not waitForReady: a host that is gone must fail fast (the job is then fenced).
    runJob: async (a, req) => { await call(this.headClient(a), 'RunJob', req, PEER_TIMEOUTS.resync); },
    listAttached: (a) => call(this.headClient(a), 'ListAttached', {}, PEER_TIMEOUTS.info, PEER_CALL),
  };

  private nodeClient(address: string): StorageNodeClient {
    let c = this.nodes.get(address);
    if (!c) {
      c = storageNodeClient(address);
      this.nodes.set(address, c);
    }
    return c;
  }

  private headClient(address: string): HeadAgentClient {
    let c = this.heads.get(address);
    if (!c) {
      c = headAgentClient(address);
      this.heads.set(address, c);
    }
    return c;
  }

  close(): void {
    for (const c of this.nodes.values()) c.close();
    for (const c of this.heads.values()) c.close();
    this.nodes.clear();
    this.heads.clear();
  }
}

/** Runs fn over items with at most `limit` in flight; settles every item. */
export async function mapLimit<T, R>(items: readonly T[], limit: number, fn: (item: T, i: number) => Promise<R>): Promise<PromiseSettledResult<R>[]> {
  const out = new Array<PromiseSettledResult<R>>(items.length);
  let next = 0;
  const worker = async () => {
    while (next < items.length) {
      const i = next++;
      try {
        out[i] = { status: 'fulfilled', value: await fn(items[i]!, i) };
      } catch (reason) {
        out[i] = { status: 'rejected', reason };
      }
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker));
  return out;
}
