import { MAX_RECONNECT_BACKOFF_MS } from '../shared/grpc.js';
import type { DiskInfo__Output } from '../proto/generated/vsky/storage/DiskInfo.js';
import type { NodeInfo__Output } from '../proto/generated/vsky/storage/NodeInfo.js';
import type { PeerClients } from './node-clients.js';
import type { PlacementModel } from './placement.js';
import type { ManagerStore, StoreBatch, StoreSnapshot } from './store.js';
import type { DiskRecord, DiskState, HeadRecord, ServerRecord, ServerState } from './types.js';
import * as disks from './registry/disks.js';
import { Heads, type RegisterHeadInput } from './registry/heads.js';
import { HeartbeatWatch } from './registry/heartbeat.js';
import * as servers from './registry/servers.js';
import { labelsOf, type RegistryHooks, type RegistryOptions, type RegistryState } from './registry/state.js';

// Servers, disks and heads: who is in the cluster and whether they are alive.
// Storage nodes register at start and heartbeat; a server silent for
// `heartbeatTimeoutMs` is marked failed (and a heartbeat revives it). Every
// state change is logged with its reason and persisted in one batch; plain
// heartbeats only touch memory. The placement model is kept in step: only
// active disks on active servers receive new chunks.
//
// A disk or server that fails (or is removed) tells `hooks.disksLost` inside
// the batch that records the change, so the replicas there are marked stale
// in that same batch (manager/failures.ts). One an admin failed (FailDisk,
// FailServer) stays failed whatever its node says, until an admin adds it
// back (AddDisk, AddServer).
//
// This class is the registry's public face; its parts live in
// manager/registry/: servers.ts, disks.ts, heads.ts, heartbeat.ts (timeouts)
// and state.ts (what they share).

export type { RegisterHeadInput, RegistryHooks, RegistryOptions };

export class Registry {
  private readonly st: RegistryState;
  private readonly heads: Heads;
  private readonly watch: HeartbeatWatch;
  readonly now: () => number;

  constructor(store: ManagerStore, model: PlacementModel, peers: PeerClients, opts: RegistryOptions) {
    this.now = opts.now ?? Date.now;
    this.st = { store, model, peers, opts, now: this.now, servers: new Map(), disks: new Map(), written: new Map(), loadedMs: 0 };
    this.heads = new Heads(this.st);
    this.watch = new HeartbeatWatch(this.st, this.heads);
  }

  get hooks(): RegistryHooks | undefined { return this.st.hooks; }
  set hooks(h: RegistryHooks | undefined) { this.st.hooks = h; }

  /** When this manager loaded its metadata. */
  get loadedMs(): number { return this.st.loadedMs; }

  /**
   * The manager now serves its API (called once, after the gRPC server is
   * bound): the servers and heads loaded from the database, not heard from
   * since, get their full heartbeat timeout from now plus one reconnect
   * backoff of their gRPC channel, not from when the database was loaded.
   * Counting from the load called live servers failed when a restart was slow
   * (seen: "no heartbeat for 2017 ms" with a 2 s timeout, their replicas
   * marked stale and resynced for nothing).
   */
  serving(): void {
    const from = this.now() + MAX_RECONNECT_BACKOFF_MS;
    for (const s of this.st.servers.values()) if (s.lastHeartbeatMs === this.loadedMs) s.lastHeartbeatMs = from;
    for (const h of this.heads.records.values()) if (h.lastHeartbeatMs === this.loadedMs) h.lastHeartbeatMs = from;
  }

  /** Fills memory and the placement model from a loaded snapshot. */
  load(snap: StoreSnapshot): void {
    // Everyone gets a full timeout after a manager restart before being called failed.
    const start = this.now();
    this.st.loadedMs = start;
    for (const s of snap.servers) this.st.servers.set(s.id, { ...s, lastHeartbeatMs: start });
    for (const h of snap.heads) this.heads.records.set(h.id, { ...h, lastHeartbeatMs: start });
    for (const s of this.st.servers.values()) this.syncServer(s);
    for (const d of snap.disks) {
      this.st.disks.set(d.id, d);
      disks.syncDisk(this.st, d);
    }
  }

  listServers(): ServerRecord[] { return [...this.st.servers.values()]; }
  /** Bytes in written regions of a volume's chunks, every copy, as the nodes last reported them. */
  writtenBytes(volumeId: number): number { return disks.writtenBytes(this.st, volumeId); }
  /** Bytes per written-region bit of the cluster's disks (one size; manager/registry/disks.ts). */
  regionSize(): number { return disks.clusterRegionSize(this.st); }
  listDisks(): DiskRecord[] { return [...this.st.disks.values()]; }
  listHeads(): HeadRecord[] { return this.heads.list(); }
  server(id: string): ServerRecord | undefined { return this.st.servers.get(id); }
  disk(id: string): DiskRecord | undefined { return this.st.disks.get(id); }
  head(id: string): HeadRecord | undefined { return this.heads.get(id); }
  disksOf(serverId: string): DiskRecord[] { return disks.disksOf(this.st, serverId); }
  serverOfDisk(diskId: string): ServerRecord | undefined {
    const d = this.st.disks.get(diskId);
    return d ? this.st.servers.get(d.serverId) : undefined;
  }
  labelsOf(s: ServerRecord): Record<string, string> { return labelsOf(s); }

  /** A server by id or name. */
  resolveServer(ref: string): ServerRecord { return servers.resolveServer(this.st, ref); }
  /** A head by id or name; empty: the only registered head. */
  resolveHead(ref: string): HeadRecord { return this.heads.resolve(ref); }

  /** A storage node announces itself; `adminLabels` come from AddServer, `readd` brings back a removed server. */
  registerServer(info: NodeInfo__Output, adminLabels?: Record<string, string>, readd = false): Promise<ServerRecord> {
    return servers.registerServer(this.st, info, adminLabels, readd);
  }
  /** Returns false when the server is unknown (it should register again). */
  heartbeat(serverId: string, reported: DiskInfo__Output[]): Promise<boolean> {
    return servers.serverHeartbeat(this.st, serverId, reported);
  }
  /** AddServer: ask the node at `controlAddress` who it is and register it with `labels`. */
  addServer(controlAddress: string, labels: Record<string, string>): Promise<ServerRecord> {
    return servers.addServer(this.st, controlAddress, labels);
  }
  /** AddDisk: the node formats/opens the disk with the cluster chunk size; the manager records it. */
  async addDisk(serverRef: string, path: string, size: number): Promise<DiskRecord> {
    return disks.addDisk(this.st, this.resolveServer(serverRef), path, size);
  }
  /** FailServer: it stays failed until vsky server add. */
  failServer(ref: string, reason: string): Promise<ServerRecord> { return servers.failServer(this.st, ref, reason); }
  /** FailDisk: it stays failed until vsky disk add. */
  failDisk(diskId: string, reason: string): Promise<DiskRecord> { return disks.failDisk(this.st, diskId, reason); }

  registerHead(req: RegisterHeadInput): Promise<HeadRecord> { return this.heads.register(req); }
  /** Forgets a head (XML-RPC deleteHeadServer; the caller checks it holds nothing). */
  removeHead(headId: string): Promise<void> { return this.heads.remove(headId); }
  /** Each head's clock minus the manager's, as it last reported. */
  headClockOffset(headId: string): number | undefined { return this.heads.clockOffset(headId); }
  headHeartbeat(headId: string, clockOffsetMs?: number): Promise<boolean> { return this.heads.heartbeat(headId, clockOffsetMs); }

  /**
   * A volume rebuilt from storage whose holder (if any) has not claimed it:
   * for one lease TTL after the manager started, a head may still hold it
   * (its heartbeat's lease claim adopts it), so nothing may take it over or
   * fence it yet. Milliseconds left of that wait (<= 0: none).
   */
  claimWaitMs(v: { claimPending?: boolean }): number {
    return v.claimPending ? this.loadedMs + this.leaseTtlMs - this.now() : 0;
  }
  /** The lease TTL: a holder silent this long may be taken over. */
  get leaseTtlMs(): number { return this.heads.leaseTtlMs; }
  /** Milliseconds until the write leases of a head expire (<= 0: expired; a take-over may proceed). */
  leaseLeftMs(headId: string): number { return this.heads.leaseLeftMs(headId); }

  /** Marks servers and heads failed whose heartbeats stopped. */
  checkTimeouts(): Promise<void> { return this.watch.checkTimeouts(); }

  setServerState(s: ServerRecord, state: ServerState, reason: string, batch: StoreBatch): void {
    servers.setServerState(this.st, s, state, reason, batch);
  }
  /** Starts or stops draining a disk (manager/resync/drains.ts): a draining disk takes no new chunks. */
  setDraining(d: DiskRecord, draining: boolean, reason: string, batch: StoreBatch): void {
    disks.setDraining(this.st, d, draining, reason, batch);
  }
  setDiskState(d: DiskRecord, state: DiskState, reason: string, batch: StoreBatch): void {
    disks.setDiskState(this.st, d, state, reason, batch);
  }
  /** Keeps the placement model in step with the server's state (a halted server takes no new chunks). */
  syncServer(s: ServerRecord): void { servers.syncServer(this.st, s); }
  /** Bad chunks were recorded on the disk (manager/bad-chunks.ts): its node keeps them too. */
  badChunksChanged(d: DiskRecord): void { this.st.hooks?.diskChanged?.(d); }
}
