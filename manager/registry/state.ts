import type { DiskInfo__Output } from '../../proto/generated/vsky/storage/DiskInfo.js';
import type { PeerClients } from '../node-clients.js';
import type { PlacementModel } from '../placement.js';
import type { ManagerStore, StoreBatch } from '../store.js';
import type { DiskRecord, ServerRecord } from '../types.js';

// What the registry's parts (servers.ts, disks.ts, heads.ts, heartbeat.ts)
// share: its options, the hooks the rest of the manager gave it, and the
// server and disk records in memory. Only the registry's files see it; the
// rest of the manager goes through the Registry class (manager/registry.ts).

export interface RegistryOptions {
  chunkSize: number;
  heartbeatTimeoutMs: number;
  /** A head's write leases expire this long after its last heartbeat (default DEFAULT_LEASE_TTL_MS). */
  leaseTtlMs?: number;
  now?: () => number;
}

/** What the rest of the manager hears from the registry (manager/core.ts wires it). */
export interface RegistryHooks {
  /** Called synchronously with the batch recording the change: the replicas on these disks are gone. */
  disksLost(diskIds: ReadonlySet<string>, reason: string, batch: StoreBatch): void;
  /** A server, disk or head changed state (spares or executors may have appeared or gone). */
  changed(reason: string): void;
  /** A disk record changed (its node keeps the admin state: manager/storage-notes.ts). */
  diskChanged?(d: DiskRecord): void;
  /** A registering node reported the note it keeps on a disk. */
  diskReported?(diskId: string, note: DiskInfo__Output['note']): void;
  /** A registering node reported the note it keeps on its server (before serverChanged). */
  serverReported?(serverId: string, note: { adminState?: string; reason?: string } | null | undefined): void;
  /** A server's admin state may have changed (its node keeps it: manager/storage-notes.ts). */
  serverChanged?(s: ServerRecord): void;
}

export interface RegistryState {
  readonly store: ManagerStore;
  readonly model: PlacementModel;
  readonly peers: PeerClients;
  readonly opts: RegistryOptions;
  readonly now: () => number;
  hooks?: RegistryHooks;
  readonly servers: Map<string, ServerRecord>;
  readonly disks: Map<string, DiskRecord>;
  /** Disk id -> volume id -> bytes in written regions (DiskInfo.written, from heartbeats). */
  readonly written: Map<string, Map<number, number>>;
  /** When this manager loaded its metadata. */
  loadedMs: number;
}

export function labelsOf(s: ServerRecord): Record<string, string> {
  return { ...s.nodeLabels, ...s.adminLabels };
}
