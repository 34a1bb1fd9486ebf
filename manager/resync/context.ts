import type { ReplicaLocation } from '../../proto/generated/vsky/common/ReplicaLocation.js';
import type { ChunkFreer } from '../gc.js';
import type { MapPusher } from '../map-pusher.js';
import type { PeerClients } from '../node-clients.js';
import type { Registry } from '../registry.js';
import type { ResyncBook } from './book.js';
import { DEFAULT_SCHEDULER_LIMITS, type SchedulerLimits } from './scheduler.js';
import type { ManagerStore } from '../store.js';
import type { ChunkLocation, HeadRecord, ResyncRecord } from '../types.js';
import type { Volumes } from '../volumes.js';

// What the parts of resync (resyncs.ts: passes and progress reports;
// resync-dispatch.ts: starting copies; resync-outcomes.ts: their ends) share.

export interface ResyncOptions {
  /** Bandwidth cap handed to executors (MiB/s per resync, 0 = unthrottled). */
  throttleMibps: number;
  /** A running resync without progress for this long is dispatched again. */
  progressTimeoutMs: number;
  limits: SchedulerLimits;
  /** Hot-spare mode: replacements for failed replicas only on these disks (manager/resync/spares.ts). */
  spareDisks?: readonly string[];
}

export const DEFAULT_RESYNC_OPTIONS: ResyncOptions = { throttleMibps: 0, progressTimeoutMs: 15_000, limits: DEFAULT_SCHEDULER_LIMITS };

/** Per-resync state kept in memory only. */
export interface Runtime {
  lastProgressMs: number;
  lastPersistMs: number;
  stalls: number;
  notBefore: number;
  /** Bytes the current attempt has reported (its counter starts at 0). */
  attemptBytes: number;
  /** Loaded as running at start: send to its executor again. */
  redispatch: boolean;
  /** Written bytes of the segment (GetChunkRegions on a source), when known. */
  bytesExpected?: number;
  /** GetChunkRegions was asked (once per resync). */
  sized?: boolean;
  noSourceLogged?: boolean;
}

export type Executor = { kind: 'head'; head: HeadRecord; epoch: number } | { kind: 'node' };

export interface ResyncContext {
  readonly store: ManagerStore;
  readonly registry: Registry;
  readonly volumes: Volumes;
  readonly peers: PeerClients;
  readonly freer: ChunkFreer;
  readonly pusher: MapPusher;
  readonly book: ResyncBook;
  readonly opts: ResyncOptions;
  /** Copy jobs' disk claims: running work for the scheduler (job-disks.ts). */
  readonly jobDisks: { running(): Array<{ id: string; disks: readonly string[] }> };
  rt(rec: ResyncRecord): Runtime;
  /** The record is gone: drop its runtime. */
  forget(rec: ResyncRecord): void;
  /** The disk and its server are active. */
  usable(diskId: string): boolean;
  wake(reason: string): void;
  /** Background work `idle()` waits for. */
  track(work: Promise<unknown>): void;
  /** Where executors report progress (the manager's listen address). */
  managerAddress(): string;
}

/** A replica as a ResyncTask names it (slot = the identity slot its node knows it by). */
export function taskLocation(registry: Registry, loc: ChunkLocation, idSlot: number, state: string): ReplicaLocation {
  const server = registry.serverOfDisk(loc.diskId);
  return {
    slot: idSlot, serverId: server?.id ?? '', dataAddress: server?.dataAddress ?? '', controlAddress: server?.controlAddress ?? '',
    diskId: loc.diskId, chunkIndex: loc.chunkIndex, state,
  };
}
