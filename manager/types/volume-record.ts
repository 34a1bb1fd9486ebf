import type { ChunkMapRecord } from './chunk-map-record.js';

// A volume as the manager records it, and a create in flight.
// (manager/types.ts says what leaves this folder.)

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

/** A create between its first and last metadata batch (see manager/volumes.ts). */
export interface PendingCreateRecord {
  volume: VolumeRecord;
  map: ChunkMapRecord;
  startedMs: number;
}
