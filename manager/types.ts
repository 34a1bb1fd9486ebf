// The manager's records: what it persists in LevelDB (manager/store.ts) and
// keeps in memory. Plain JSON-able objects; the wire shapes (proto messages)
// are produced from these by manager/views.ts.

export type ServerState = 'active' | 'failed' | 'removed';
export type DiskState = 'active' | 'failed' | 'removed';
export type HeadState = 'active' | 'failed';
import type { ReplicaState } from '../shared/replica-state.js';
export type { ReplicaState } from '../shared/replica-state.js';

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

export interface VolumeRecord {
  id: number;
  name: string;
  size: number;
  replicas: number;
  chunkSize: number;
  segmentCount: number;
  generation: number;
  /** Highest lease epoch granted; only increases. */
  epoch: number;
  /** Head id holding the attachment and the write lease, '' when not attached. */
  attachedHead: string;
  nbdUri: string;
  /**
   * A second head attached for a live migration (absent/'' none): it exports
   * the volume and does no I/O until the lease moves to it (manager/leases.ts).
   */
  standbyHead?: string;
  standbyNbdUri?: string;
  standbyIscsiUrl?: string;
  /** iscsi://HOST:PORT/IQN/0 while attached to a head with an iSCSI portal (absent in older records). */
  iscsiUrl?: string;
  /** iSCSI access rules handed to the head at attach (absent: any initiator, no CHAP). */
  access?: IscsiAccessRecord;
  spreadLabel: string;
  createdMs: number;
  /**
   * The epoch last granted to storage-node resync copies (detached path): equal
   * to `epoch` while no attach came after it, so the copies of one volume share
   * it; an attached head whose epoch was superseded this way no longer holds
   * the lease (see `holderEpoch`).
   */
  resyncEpoch?: number;
  /**
   * Version of the last segment note sent to the storage nodes (manager/segment-notes.ts):
   * only grows, persisted before any node hears of it (absent: 0).
   */
  mapVersion?: number;
  /**
   * Version of the volume note (its access rules) last written to the storage
   * nodes (manager/storage-notes.ts): only grows (absent: never written).
   */
  noteVersion?: number;
  /**
   * Rebuilt from storage, and no head has claimed its lease yet: a head may
   * still hold it, so for one lease TTL after the manager started nobody
   * takes it over or fences it (Registry.claimWaitMs); cleared by the claim.
   */
  claimPending?: boolean;
  /**
   * Committed, but some of its chunks may still carry the CREATING mark they
   * were allocated with (manager/volumes.ts create): the manager sends the
   * committed note (manager/storage-notes.ts confirmCreate) until every node
   * holding a chunk took it, then clears this. A rebuild from storage rolls
   * back a never-used volume whose chunks all say CREATING.
   */
  unconfirmed?: boolean;
  /**
   * VastSky-style lvolid (manager/xmlrpc/ids.ts), stable once given: the first
   * of a block of segmentCount + 3 lvol ids (the volume, its SNAPSHOT-ORIGIN
   * and LINEAR nodes, then one MIRROR per segment). Created volumes get it
   * before their chunks are allocated, and their chunks carry it.
   */
  intId?: number;
  /** The lvolid its chunks carry (set by a rebuild from storage; adopted if free; manager/xmlrpc/ids.ts). */
  claimedIntId?: number;
  /**
   * DIRTY: the storage job that left it so (aborted, failed or fenced after it
   * marked the volume DIRTY; manager/jobs/). A fresh attach is refused until a
   * job on it succeeds (which clears this), or with an explicit, logged override.
   */
  dirty?: { jobId: string; kind: string; state: string; sinceMs: number };
  /**
   * Thin (docs/thin-provisioning.md): a segment gets its chunks at its first
   * write (AllocateSegment) and gives them back when wholly discarded
   * (FreeSegment). Absent: thick (every chunk reserved at create).
   */
  thin?: boolean;
  /**
   * Snapshots and clones (docs/snapshots.md). 'snapshot': a read-only
   * point-in-time volume whose chunks are never written again. Absent: a volume.
   */
  kind?: 'snapshot';
  /** A snapshot: the id of the volume it was taken of. */
  origin?: number;
  /** The snapshot (volume id) this volume's unwritten regions read from (a clone, or a snapshotted volume). */
  backing?: number;
  /** A snapshot whose chunks may not all carry its identity on their nodes yet (ReassignChunk retried until done). */
  reassigning?: boolean;
}

/** The one predicate for "unwritten regions read from another volume" (docs/snapshots.md). */
export function hasBacking(v: VolumeRecord): boolean {
  return v.backing !== undefined && v.backing > 0;
}

/** The lease epoch the attached head holds, or undefined when no head holds the lease. */
export function holderEpoch(v: VolumeRecord): number | undefined {
  return v.attachedHead && (v.resyncEpoch ?? 0) < v.epoch ? v.epoch : undefined;
}

export interface IscsiAccessRecord {
  initiators: string[];
  chapUser: string;
  chapSecret: string;
  mutualUser: string;
  mutualSecret: string;
}

/**
 * Where every replica of a volume lives, kept compact because a large volume
 * has thousands of replicas and startup loads every map: `disks` is a table of
 * disk ids and `locs` holds two numbers per replica, [diskRef, chunkIndex],
 * segment-major (replica r = segment * replicas + slot).
 */
export interface ChunkMapRecord {
  volumeId: number;
  replicas: number;
  segmentCount: number;
  disks: string[];
  locs: number[];
  /** Replica positions (segment * replicas + slot) known to be stale: never read, never written. */
  stale?: number[];
  /** Replica positions being rebuilt: written, not read, until their resync finishes. */
  resyncing?: number[];
  /**
   * Chunk identity slots that differ from the position's slot, as pairs
   * [r, idSlot]. A node addresses a chunk by (volume, segment, identity
   * slot); a drain copies a replica onto a chunk allocated under a slot number
   * no chunk of the segment uses (it may sit on the same node as the old one),
   * and the position keeps that identity afterwards.
   */
  ids?: number[];
  /**
   * Drains in progress, as quads [r, diskRef, chunkIndex, idSlot]: the chunk
   * replica r is being copied to (manager/resync/drains.ts). Written like a
   * resyncing replica, never read; replica r itself stays in sync, so the
   * segment keeps full redundancy throughout. At most one per position.
   */
  moves?: number[];
  /**
   * Thin volume: a segment whose every position is [-1, -1] in `locs` is
   * unallocated (no chunks; reads zeros). forEachReplica skips it.
   */
  thin?: boolean;
}

/** A thin map's segment without chunks (manager/thin/). */
export function isUnallocated(map: ChunkMapRecord, segment: number): boolean {
  return map.locs[2 * segment * map.replicas]! < 0;
}

/** Segments with chunks. */
export function allocatedSegments(map: ChunkMapRecord): number {
  let n = 0;
  for (let s = 0; s < map.segmentCount; s++) if (!isUnallocated(map, s)) n++;
  return n;
}

export type ResyncState = 'queued' | 'running';

/** A chunk on a disk. */
export interface ChunkLocation {
  diskId: string;
  chunkIndex: number;
}

/**
 * One replica being rebuilt (manager/resync/resyncs.ts). The map points the slot at
 * `target` (state resyncing) from the batch that creates this record until the
 * batch that deletes it and marks the replica in sync.
 */
export interface ResyncRecord {
  /** "r<n>", never reused (meta/next_resync_id). */
  id: string;
  /** rebuild (absent in older records): the slot's resyncing replica; drain: the slot's drain target (ChunkMapRecord.moves). */
  kind?: 'rebuild' | 'drain';
  volumeId: number;
  segment: number;
  slot: number;
  target: ChunkLocation;
  /** The replica this one replaces (put on the to-free list in the creating batch). */
  old: ChunkLocation;
  state: ResyncState;
  /** Regions below this index are copied into `target`. */
  regionsDone: number;
  regionsTotal: number;
  bytesCopied: number;
  createdMs: number;
  /**
   * Dispatches so far: the executor's task id is `${id}.${attempt}`; a report
   * naming an older attempt is answered cancel. A re-dispatch of the same
   * attempt (manager restart, progress timeout) keeps the id, so executors dedupe.
   */
  attempt: number;
  /** 'head:<head id>' or 'node:<server id>' while running; '' when queued. */
  executor: string;
  /** Source disk ids of the running attempt. */
  sources: string[];
  startedMs: number;
  /** Lease epoch the running attempt copies under. */
  epoch: number;
  lastError: string;
  /** Failed attempts on the current target (a new spare after a few). */
  failures: number;
}

/** A create between its first and last metadata batch (see manager/volumes.ts). */
export interface PendingCreateRecord {
  volume: VolumeRecord;
  map: ChunkMapRecord;
  startedMs: number;
}

/** A chunk whose owner is gone but that a node has not yet confirmed freed. */
export interface ToFreeRecord {
  diskId: string;
  chunkIndex: number;
  volumeId: number;
  /** Its identity, when known (a replaced replica): a new chunk of the segment must not reuse it while this one exists. */
  segment?: number;
  idSlot?: number;
  reason: string;
  sinceMs: number;
}

/** One replica's location, unpacked. */
export interface ReplicaRef {
  /** Position (segment * replicas + slot). */
  r: number;
  segment: number;
  slot: number;
  /** The slot number its node addresses the chunk by. */
  idSlot: number;
  diskId: string;
  chunkIndex: number;
  state: ReplicaState;
  /** The target of a drain of replica `r` (state resyncing), not the replica itself. */
  move: boolean;
}

export function buildChunkMap(
  volumeId: number, replicas: number, segmentCount: number,
  placed: ReadonlyArray<{ segment: number; slot: number; diskId: string; chunkIndex: number }>,
): ChunkMapRecord {
  const disks: string[] = [];
  const refOf = new Map<string, number>();
  const locs = new Array<number>(segmentCount * replicas * 2).fill(-1);
  for (const p of placed) {
    let ref = refOf.get(p.diskId);
    if (ref === undefined) {
      ref = disks.length;
      disks.push(p.diskId);
      refOf.set(p.diskId, ref);
    }
    const r = p.segment * replicas + p.slot;
    locs[2 * r] = ref;
    locs[2 * r + 1] = p.chunkIndex;
  }
  return { volumeId, replicas, segmentCount, disks, locs };
}

/**
 * Calls fn for every replica of the map, segment-major; a segment's drain
 * targets (`move: true`) come after its replicas.
 */
export function forEachReplica(map: ChunkMapRecord, fn: (ref: ReplicaRef) => void): void {
  const stale = map.stale && map.stale.length > 0 ? new Set(map.stale) : undefined;
  const resyncing = map.resyncing && map.resyncing.length > 0 ? new Set(map.resyncing) : undefined;
  const ids = pairsOf(map.ids, 2);
  const moves = pairsOf(map.moves, 4);
  const total = map.segmentCount * map.replicas;
  for (let r = 0; r < total; r++) {
    const segment = Math.floor(r / map.replicas);
    const slot = r % map.replicas;
    if (map.locs[2 * r]! < 0) continue; // an unallocated segment of a thin volume
    fn({
      r, segment, slot, idSlot: ids?.get(r) ?? slot,
      diskId: map.disks[map.locs[2 * r]!]!,
      chunkIndex: map.locs[2 * r + 1]!,
      state: stale?.has(r) ? 'stale' : resyncing?.has(r) ? 'resyncing' : 'in_sync',
      move: false,
    });
    if (moves && slot === map.replicas - 1) {
      for (let p = r - slot; p <= r; p++) {
        const at = moves.get(p);
        if (at === undefined) continue;
        const q = map.moves!;
        fn({ r: p, segment, slot: p % map.replicas, idSlot: q[at + 3]!, diskId: map.disks[q[at + 1]!]!, chunkIndex: q[at + 2]!, state: 'resyncing', move: true });
      }
    }
  }
}

/** Position -> its value (width 2: the identity slot) or its offset in the list (width 4), or undefined when the list is empty. */
function pairsOf(list: number[] | undefined, width: 2 | 4): Map<number, number> | undefined {
  if (!list || list.length === 0) return undefined;
  const out = new Map<number, number>();
  for (let i = 0; i + width <= list.length; i += width) out.set(list[i]!, width === 2 ? list[i + 1]! : i);
  return out;
}

/** Checks that a map loaded from disk is whole; returns a reason or undefined. */
export function chunkMapProblem(map: ChunkMapRecord): string | undefined {
  const total = map.segmentCount * map.replicas;
  if (!Array.isArray(map.locs) || map.locs.length !== total * 2) return `expected ${total * 2} location numbers, found ${map.locs?.length}`;
  for (let i = 0; i < map.locs.length; i += 2) {
    const ref = map.locs[i]!;
    const r = i / 2;
    if (map.thin && ref === -1 && map.locs[i + 1] === -1 && isUnallocated(map, Math.floor(r / map.replicas))) continue;
    if (!(ref >= 0 && ref < map.disks.length) || !(map.locs[i + 1]! >= 0)) return `replica ${r} has no location`;
  }
  const position = (r: number | undefined) => Number.isInteger(r) && r! >= 0 && r! < total;
  const idSlot = (x: number | undefined) => Number.isInteger(x) && x! >= 0 && x! <= 255;
  if (map.ids !== undefined) {
    if (!Array.isArray(map.ids) || map.ids.length % 2 !== 0) return 'identity slots are not pairs';
    for (let i = 0; i < map.ids.length; i += 2) if (!position(map.ids[i]) || !idSlot(map.ids[i + 1])) return `identity slot entry ${i / 2} is invalid`;
  }
  if (map.moves !== undefined) {
    if (!Array.isArray(map.moves) || map.moves.length % 4 !== 0) return 'drain targets are not quads';
    for (let i = 0; i < map.moves.length; i += 4) {
      const ref = map.moves[i + 1]!;
      if (!position(map.moves[i]) || !(ref >= 0 && ref < map.disks.length) || !(map.moves[i + 2]! >= 0) || !idSlot(map.moves[i + 3])) return `drain target ${i / 4} is invalid`;
    }
  }
  return undefined;
}

/**
 * What the manager's event log (manager/events.ts) records: every state
 * change, with when, what it is about and why. A kind is "<subject>.<what>".
 */
export const EVENT_KINDS = [
  'server.added', 'server.up', 'server.failed', 'server.removed',
  'disk.added', 'disk.up', 'disk.failed', 'disk.removed',
  'head.up', 'head.failed', 'head.removed',
  'replica.stale', 'spare.placed',
  'resync.started', 'resync.requeued', 'resync.failed', 'resync.finished',
  'drain.started', 'drain.cancelled', 'drain.target_placed', 'drain.target_dropped', 'drain.converted', 'drain.finished',
  'volume.created', 'volume.create_failed', 'volume.deleted',
  'volume.attached', 'volume.attach_failed', 'volume.attach_dirty', 'volume.standby_attached', 'volume.detached', 'volume.standby_detached',
  'lease.handoff', 'lease.handoff_failed', 'lease.takeover', 'lease.resync_epoch',
  'gc.freed',
  'job.succeeded', 'job.failed', 'job.aborted', 'job.fenced',
  'intid.conflict', 'disk.bad_blocks', 'server.halted', 'head.halted',
  'segment.allocated', 'segment.allocate_failed', 'segment.freed', 'pool.threshold',
  'snapshot.created', 'volume.cloned', 'snapshot.merging',
] as const;

export type EventKind = (typeof EVENT_KINDS)[number];

/** Facts about an event (epochs, generation, heads, segment/slot, bytes...). */
export type EventDetails = Record<string, string | number | boolean>;

/** One entry of the event log, persisted as `event/<seq, 20 digits>`. */
export interface EventRecord {
  /** 1, 2, 3... in commit order; continues across restarts; never reused. */
  seq: number;
  /** When it happened (the manager's clock, ms since the epoch). */
  timeMs: number;
  kind: EventKind;
  /** What it is about: 'volume:NAME', 'disk:ID', 'server:NAME', 'head:NAME' or 'cluster'. */
  target: string;
  /** Why, for a person. */
  reason: string;
  details: EventDetails;
}
