import type { ChunkList__Output } from '../../proto/generated/vsky/storage/ChunkList.js';
import type { NodeInfo__Output } from '../../proto/generated/vsky/storage/NodeInfo.js';
import type { DiskRecord } from '../types.js';

// The chunk records a rebuild from storage reads (manager/rebuild/plan.ts has
// the rules), flattened, and what the planner's steps share.

/** The placeholder disk of replicas no storage node reported (rule 5). */
export const LOST_DISK_ID = 'lost';
/** The placeholder server of LOST_DISK_ID. */
export const LOST_SERVER_ID = 'lost';
/** Port 0: a connection to it is refused at once. */
export const LOST_ADDRESS = '127.0.0.1:0';
/** An identity slot is one byte on the wire. */
export const MAX_ID_SLOT = 255;
/** stale_slots is a uint32: identity slots above 31 cannot be noted. */
export const NOTE_BITS = 32;

export interface NodeTable {
  server: NodeInfo__Output;
  chunks: ChunkList__Output['chunks'];
  volumeNotes?: ChunkList__Output['volumeNotes'];
  /** Tombstones: volumes whose delete began (MarkVolumeDeleting reaches every node). */
  deletedVolumes?: number[];
}

/** A chunk the plan neither places nor frees (rule 8). */
export interface SetAsideChunk { diskId: string; chunkIndex: number; volumeId: number; reason: string }

/** One chunk record, flattened. */
export interface Found {
  diskId: string;
  chunkIndex: number;
  volumeId: number;
  name: string;
  size: number;
  replicas: number;
  segmentCount: number;
  segment: number;
  idSlot: number;
  generation: number;
  epoch: number;
  staleSlots: number;
  mapVersion: number;
  written: number;
  /** The volume's VastSky lvolid the chunk carries (0: none). */
  lvolid: number;
  /** LEGAL, DIRTY (a job changed it) or DELETING (a delete began). */
  legality: string;
  jobId: string;
  jobKind: string;
  jobOutcome: string;
  /** On a disk that can serve it (its node does not report it failed). */
  readable: boolean;
  inSync: boolean;
  /** The chunk's volume is thin: its segments without chunks are unallocated, not lost. */
  thin: boolean;
  /** A snapshot's chunk (its record's read-only mark). */
  readOnly: boolean;
}

export type DiskUse = 'ok' | 'failed' | 'aside';

export interface DiskSeen {
  rec: DiskRecord;
  use: DiskUse;
  /** Why the disk's chunks are set aside (use 'aside'). */
  why: string;
  /** Of another cluster: its volume ids are not ours (nextVolumeId ignores them). */
  foreign: boolean;
  indices: Set<number>;
}

export const plural = (n: number, word: string) => `${n} ${word}${n === 1 ? '' : 's'}`;

/** "a, b, c (+4 more)" */
export function few(items: string[], max = 4): string {
  return items.slice(0, max).join(', ') + (items.length > max ? ` (+${items.length - max} more)` : '');
}

/** What must agree among a volume's chunks: name, size, K, segment count. */
export const sameIdentity = (a: Found, b: Found) => a.name === b.name && a.size === b.size && a.replicas === b.replicas && a.segmentCount === b.segmentCount;
export const identityKey = (f: Found) => `${f.name}\u0000${f.size}\u0000${f.replicas}\u0000${f.segmentCount}`;

/** Negative when `a` is the better copy (rule 4). */
export function better(a: Found, b: Found): number {
  if (a.inSync !== b.inSync) return a.inSync ? -1 : 1;
  return (b.generation - a.generation) || (b.epoch - a.epoch) || (b.mapVersion - a.mapVersion) || (b.written - a.written)
    || (a.idSlot - b.idSlot) || (a.diskId < b.diskId ? -1 : a.diskId > b.diskId ? 1 : 0) || (a.chunkIndex - b.chunkIndex);
}
