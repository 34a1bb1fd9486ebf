import { ConflictError, InvalidArgumentError, NotFoundError, errorMessage } from '../shared/errors.js';
import { DEFAULT_LEASE_TTL_MS } from '../shared/constants.js';
import { MAX_RECONNECT_BACKOFF_MS } from '../shared/grpc.js';
import { moduleLogger } from '../shared/logger.js';
import { formatSize, parseHostPort } from '../shared/units.js';
import type { DiskInfo__Output } from '../proto/generated/vsky/storage/DiskInfo.js';
import type { NodeInfo__Output } from '../proto/generated/vsky/storage/NodeInfo.js';
import { claimDiskIds, claimHeadId, claimServerId } from './int-id-claims.js';
import type { PeerClients } from './node-clients.js';
import type { PlacementModel } from './placement.js';
import type { ManagerStore, StoreBatch, StoreSnapshot } from './store.js';
import type { DiskRecord, DiskState, HeadRecord, ServerRecord, ServerState } from './types.js';

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

const log = moduleLogger('manager.registry');

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

export interface RegisterHeadInput {
  headId: string;
  name: string;
  controlAddress: string;
  nbdAddress: string;
  /** The hsvrid the head kept, and the cluster that gave it (manager/int-id-claims.ts). */
  hsvrid?: number;
  hsvridClusterId?: string;
}

export class Registry {
  /** Disk id -> volume id -> bytes in written regions (DiskInfo.written, from heartbeats). */
  private readonly written = new Map<string, Map<number, number>>();
  private readonly servers = new Map<string, ServerRecord>();
  private readonly disks = new Map<string, DiskRecord>();
  private readonly heads = new Map<string, HeadRecord>();
  readonly now: () => number;
  hooks?: RegistryHooks;

  constructor(
    private readonly store: ManagerStore,
    private readonly model: PlacementModel,
    private readonly peers: PeerClients,
    private readonly opts: RegistryOptions,
  ) {
    this.now = opts.now ?? Date.now;
  }

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
    for (const s of this.servers.values()) if (s.lastHeartbeatMs === this.loadedMs) s.lastHeartbeatMs = from;
    for (const h of this.heads.values()) if (h.lastHeartbeatMs === this.loadedMs) h.lastHeartbeatMs = from;
  }

  /** Fills memory and the placement model from a loaded snapshot. */
  load(snap: StoreSnapshot): void {
    // Everyone gets a full timeout after a manager restart before being called failed.
    const start = this.now();
    this.loadedMs = start;
    for (const s of snap.servers) this.servers.set(s.id, { ...s, lastHeartbeatMs: start });
    for (const h of snap.heads) this.heads.set(h.id, { ...h, lastHeartbeatMs: start });
    for (const s of this.servers.values()) this.syncServer(s);
    for (const d of snap.disks) {
      this.disks.set(d.id, d);
      this.syncDisk(d);
    }
  }

  listServers(): ServerRecord[] { return [...this.servers.values()]; }

  /**
   * Bytes in written regions of a volume's chunks, every copy, as the nodes
   * last reported them (heartbeats; not persisted: 0 until they report).
   */
  writtenBytes(volumeId: number): number {
    let n = 0;
    for (const [diskId, byVolume] of this.written) {
      if (this.disks.get(diskId)?.state === 'removed') continue;
      n += byVolume.get(volumeId) ?? 0;
    }
    return n;
  }
  listDisks(): DiskRecord[] { return [...this.disks.values()]; }
  listHeads(): HeadRecord[] { return [...this.heads.values()]; }
  server(id: string): ServerRecord | undefined { return this.servers.get(id); }
  disk(id: string): DiskRecord | undefined { return this.disks.get(id); }
  head(id: string): HeadRecord | undefined { return this.heads.get(id); }
  disksOf(serverId: string): DiskRecord[] { return this.listDisks().filter((d) => d.serverId === serverId); }
  serverOfDisk(diskId: string): ServerRecord | undefined {
    const d = this.disks.get(diskId);
    return d ? this.servers.get(d.serverId) : undefined;
  }

  labelsOf(s: ServerRecord): Record<string, string> {
    return { ...s.nodeLabels, ...s.adminLabels };
  }

  /** A server by id or name. */
  resolveServer(ref: string): ServerRecord {
    if (!ref) throw new InvalidArgumentError('no server given: name a server by id or name (see vsky server list)');
    const byId = this.servers.get(ref);
    if (byId) return byId;
    const named = this.listServers().filter((s) => s.name === ref);
    if (named.length === 1) return named[0]!;
    if (named.length > 1) throw new InvalidArgumentError(`server name "${ref}" is ambiguous (${named.map((s) => s.id).join(', ')}); use the server id`);
    throw new NotFoundError(`no server "${ref}": see vsky server list`, { server: ref });
  }

  /** A head by id or name; empty: the only registered head. */
  resolveHead(ref: string): HeadRecord {
    const heads = this.listHeads();
    if (!ref) {
      if (heads.length === 1) return heads[0]!;
      if (heads.length === 0) throw new NotFoundError('no head agent is registered: start vsky head-agent on the hypervisor first');
      throw new InvalidArgumentError(`${heads.length} head agents are registered (${heads.map((h) => h.name).join(', ')}): name one with --head`);
    }
    const byId = this.heads.get(ref);
    if (byId) return byId;
    const named = heads.filter((h) => h.name === ref);
    if (named.length === 1) return named[0]!;
    if (named.length > 1) throw new InvalidArgumentError(`head name "${ref}" is ambiguous (${named.map((h) => h.id).join(', ')}); use the head id`);
    throw new NotFoundError(`no head "${ref}": see vsky head list`, { head: ref });
  }

  /**
   * A storage node announces itself (at start) with its disks. `adminLabels`
   * come from AddServer; `readd` lets AddServer bring back a removed server.
   */
  async registerServer(info: NodeInfo__Output, adminLabels?: Record<string, string>, readd = false): Promise<ServerRecord> {
    if (!info.serverId) throw new InvalidArgumentError('RegisterServer needs a server_id (the node keeps a UUID in its data directory)');
    parseHostPort(info.dataAddress, 'data address');
    parseHostPort(info.controlAddress, 'control address');
    const foreign = info.disks.filter((d) => d.clusterId && d.clusterId !== this.store.clusterId);
    if (foreign.length > 0) {
      throw new ConflictError(`server ${info.name || info.serverId} has ${foreign.length} disk(s) of another cluster (${foreign.map((d) => `${d.path}: cluster ${d.clusterId}`).join(', ')}; `
        + `this cluster is ${this.store.clusterId}): it is not adopted, and nothing on it is freed or overwritten. If this manager's database `
        + 'was lost, start the manager on an empty data directory with --rebuild-from-storage; otherwise remove those disks from the node',
      { serverId: info.serverId });
    }
    const now = this.now();
    const batch = this.store.batch();
    let s = this.servers.get(info.serverId);
    if (s?.state === 'removed' && !readd) {
      throw new ConflictError(`server ${s.name} (${s.id}) was removed from the cluster; add it back with vsky server add ${info.controlAddress}`);
    }
    const name = info.name || info.serverId;
    if (readd && s?.adminFailed) s.adminFailed = false;
    if (!s) {
      s = {
        id: info.serverId, name, dataAddress: info.dataAddress, controlAddress: info.controlAddress,
        nodeLabels: { ...info.labels }, adminLabels: { ...adminLabels }, state: 'active', stateReason: 'registered',
        registeredMs: now, lastHeartbeatMs: now,
      };
      this.servers.set(s.id, s);
      log.info({ serverId: s.id, name, dataAddress: s.dataAddress, labels: this.labelsOf(s) }, 'server registered');
      batch.event('server.added', `server:${name}`, readd ? 'added by an admin' : 'registered', { serverId: s.id, dataAddress: s.dataAddress, controlAddress: s.controlAddress });
    } else {
      Object.assign(s, {
        name, dataAddress: info.dataAddress, controlAddress: info.controlAddress, nodeLabels: { ...info.labels },
        adminLabels: { ...s.adminLabels, ...adminLabels }, lastHeartbeatMs: now,
      });
      if (s.halted) {
        delete s.halted;
        batch.event('server.up', `server:${name}`, 'registered again: no longer halted (shutdownAll)', { serverId: s.id });
      }
      if (s.adminFailed) log.warn({ serverId: s.id, name }, 'server failed by an admin registered again; it stays failed until vsky server add');
      else if (s.state !== 'active') this.setServerState(s, 'active', readd ? 're-added by an admin' : 'registered again', batch);
      log.info({ serverId: s.id, name, labels: this.labelsOf(s) }, 'server re-registered');
    }
    claimServerId(s, info.ssvrid, info.intIdsClusterId, this.store.clusterId);
    batch.putServer(s);
    this.syncServer(s);
    this.applyDiskReport(s, info.disks, batch, true);
    await this.store.write(batch);
    this.hooks?.serverReported?.(s.id, info.note);
    this.hooks?.serverChanged?.(s);
    return s;
  }

  /** Returns false when the server is unknown (it should register again). */
  async heartbeat(serverId: string, disks: DiskInfo__Output[]): Promise<boolean> {
    const s = this.servers.get(serverId);
    if (!s) return false;
    if (s.state === 'removed') return true; // known, but an admin took it out: ignored
    s.lastHeartbeatMs = this.now();
    const batch = this.store.batch();
    if (s.state === 'failed' && !s.adminFailed) {
      this.setServerState(s, 'active', 'heartbeat received again', batch);
      batch.putServer(s);
    }
    // A heartbeat may carry a partial disk list: missing disks are not failed here.
    this.applyDiskReport(s, disks, batch, false);
    if (batch.length > 0) await this.store.write(batch);
    return true;
  }

  /** AddServer: ask the node at `controlAddress` who it is and register it with `labels`. */
  async addServer(controlAddress: string, labels: Record<string, string>): Promise<ServerRecord> {
    parseHostPort(controlAddress, 'control address');
    for (const k of Object.keys(labels)) {
      if (!/^[A-Za-z0-9._/-]{1,64}$/.test(k)) throw new InvalidArgumentError(`invalid label name "${k}": use 1-64 of A-Z a-z 0-9 . _ / -`);
    }
    let info: NodeInfo__Output;
    try {
      info = await this.peers.node.getInfo(controlAddress);
    } catch (err) {
      throw new ConflictError(`cannot reach the storage node at ${controlAddress}: ${errorMessage(err)}; start vsky storage-node there and check the address`);
    }
    // The address the admin gave is known to reach the node from here (the
    // node may report a wildcard such as 0.0.0.0); a later RegisterServer from
    // the node itself updates it.
    return this.registerServer({ ...info, controlAddress }, labels, true);
  }

  /** AddDisk: the node formats/opens the disk with the cluster chunk size; the manager records it. */
  async addDisk(serverRef: string, path: string, size: number): Promise<DiskRecord> {
    const s = this.resolveServer(serverRef);
    if (!path) throw new InvalidArgumentError('no disk path given: name a file or block device on the server');
    if (!Number.isSafeInteger(size) || size < 0) throw new InvalidArgumentError(`invalid disk size ${size}`);
    if (size > 0 && size < this.opts.chunkSize) {
      throw new InvalidArgumentError(`disk size ${formatSize(size)} is smaller than one chunk (${formatSize(this.opts.chunkSize)}); give a larger size`);
    }
    if (s.state !== 'active') throw new ConflictError(`server ${s.name} is ${s.state}; bring it back (or vsky server add) before adding disks`);
    const info = await this.peers.node.addDisk(s.controlAddress, { path, size, chunkSize: this.opts.chunkSize });
    if (info.clusterId && info.clusterId !== this.store.clusterId) {
      throw new ConflictError(`disk ${path} on ${s.name} belongs to cluster ${info.clusterId}, not this one (${this.store.clusterId}): not adopted; `
        + 'remove it from the node, or zero its first 4 KiB to reuse it (its data is lost)', { path });
    }
    if (!info.diskId) throw new InvalidArgumentError(`server ${s.name} returned no disk id for ${path}`);
    if (info.chunkSize !== this.opts.chunkSize) {
      throw new ConflictError(`disk ${path} on ${s.name} is formatted with ${formatSize(info.chunkSize)} chunks but the cluster uses ${formatSize(this.opts.chunkSize)}; use another disk or reformat it`);
    }
    const batch = this.store.batch();
    const existing = this.disks.get(info.diskId);
    if (existing?.state === 'removed' || existing?.adminFailed) {
      existing.adminFailed = false;
      this.setDiskState(existing, 'active', 're-added by an admin', batch);
    }
    if (existing?.draining) this.setDraining(existing, false, 'AddDisk: the drain is cancelled', batch);
    this.applyDiskReport(s, [info], batch, false);
    const d = this.disks.get(info.diskId)!;
    batch.putDisk(d);
    await this.store.write(batch);
    log.info({ diskId: d.id, serverId: s.id, path, chunkCount: d.chunkCount, state: d.state }, 'disk added');
    return d;
  }

  async registerHead(req: RegisterHeadInput): Promise<HeadRecord> {
    if (!req.headId) throw new InvalidArgumentError('RegisterHead needs a head_id (the head agent keeps one in its data directory)');
    parseHostPort(req.controlAddress, 'head control address');
    if (req.nbdAddress) parseHostPort(req.nbdAddress, 'head NBD address');
    const now = this.now();
    const prev = this.heads.get(req.headId);
    const h: HeadRecord = {
      id: req.headId, name: req.name || req.headId, controlAddress: req.controlAddress, nbdAddress: req.nbdAddress,
      state: 'active', registeredMs: prev?.registeredMs ?? now, lastHeartbeatMs: now,
      ...(prev?.intId !== undefined ? { intId: prev.intId } : {}),
    };
    claimHeadId(h, req.hsvrid ?? 0, req.hsvridClusterId ?? '', this.store.clusterId);
    this.heads.set(h.id, h);
    await this.store.write(this.store.batch().putHead(h).event('head.up', `head:${h.name}`, !prev ? 'registered' : prev.state === 'failed' ? 'registered again after it failed' : 'registered again (restarted)', { headId: h.id, controlAddress: h.controlAddress, again: !!prev }));
    log.info({ headId: h.id, name: h.name, controlAddress: h.controlAddress, again: !!prev }, 'head registered');
    return h;
  }

  /** Forgets a head (XML-RPC deleteHeadServer; the caller checks it holds nothing). A head that registers again is new. */
  async removeHead(headId: string): Promise<void> {
    const h = this.heads.get(headId);
    if (!h) return;
    this.heads.delete(headId);
    await this.store.write(this.store.batch().delHead(headId).event('head.removed', `head:${h.name}`, 'forgotten (it holds nothing); if it registers again it is a new head', { headId }));
    log.info({ headId, name: h.name }, 'head removed');
  }

  /** Each head's clock minus the manager's, as it last reported (memory only: heads report it every heartbeat). */
  private readonly headClockOffsets = new Map<string, number>();

  headClockOffset(headId: string): number | undefined {
    return this.headClockOffsets.get(headId);
  }

  async headHeartbeat(headId: string, clockOffsetMs?: number): Promise<boolean> {
    const h = this.heads.get(headId);
    if (!h) return false;
    h.lastHeartbeatMs = this.now();
    if (clockOffsetMs !== undefined) this.headClockOffsets.set(headId, clockOffsetMs);
    if (h.state === 'failed') {
      h.state = 'active';
      log.info({ headId: h.id, name: h.name }, 'head active again: heartbeat received');
      await this.store.write(this.store.batch().putHead(h).event('head.up', `head:${h.name}`, 'heartbeat received again', { headId: h.id }));
      this.hooks?.changed('head active');
    }
    return true;
  }

  /** When this manager loaded its metadata. */
  loadedMs = 0;

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
  get leaseTtlMs(): number {
    return this.opts.leaseTtlMs ?? DEFAULT_LEASE_TTL_MS;
  }

  /**
   * Milliseconds until the write leases of a head expire (<= 0: expired; a
   * take-over may proceed). Leases are renewed by the head's heartbeats and
   * judged on this manager's clock alone (no clocks of two hosts are
   * compared); a manager restart gives every head a full TTL again.
   */
  leaseLeftMs(headId: string): number {
    const h = this.heads.get(headId);
    if (!h) return 0;
    return h.lastHeartbeatMs + this.leaseTtlMs - this.now();
  }

  private lastCheckMs: number | undefined;

  /** Marks servers and heads failed whose heartbeats stopped. */
  async checkTimeouts(): Promise<void> {
    const now = this.now();
    const limit = this.opts.heartbeatTimeoutMs;
    // The manager itself did not run for a while (SIGSTOP, a paused VM, a long
    // stall): the silence is ours, not the peers'. Their heartbeats queued up
    // unread; give them one timeout from now instead of failing every server
    // and head at once (which would mark every replica stale).
    const wall = Date.now(); // the process's own pauses, whatever clock the registry runs on (tests fake `now`)
    const gap = this.lastCheckMs === undefined ? 0 : wall - this.lastCheckMs;
    this.lastCheckMs = wall;
    if (gap > limit / 2) {
      log.warn({ pausedMs: gap, timeoutMs: limit }, 'the manager did not run for a while: heartbeat timeouts restart from now');
      for (const s of this.servers.values()) if (s.state === 'active') s.lastHeartbeatMs = Math.max(s.lastHeartbeatMs, now);
      for (const h of this.heads.values()) if (h.state === 'active') h.lastHeartbeatMs = Math.max(h.lastHeartbeatMs, now);
      return;
    }
    const batch = this.store.batch();
    for (const s of this.servers.values()) {
      if (s.state === 'active' && !s.halted && now - s.lastHeartbeatMs > limit) {
        this.setServerState(s, 'failed', `no heartbeat for ${now - s.lastHeartbeatMs} ms (timeout ${limit} ms)`, batch);
        batch.putServer(s);
      }
    }
    let headsFailed = 0;
    for (const h of this.heads.values()) {
      if (h.state === 'active' && !h.halted && now - h.lastHeartbeatMs > limit) {
        h.state = 'failed';
        headsFailed++;
        log.warn({ headId: h.id, name: h.name, silentMs: now - h.lastHeartbeatMs }, `head ${h.name} failed: no heartbeat for ${now - h.lastHeartbeatMs} ms`);
        batch.putHead(h);
        batch.event('head.failed', `head:${h.name}`, `no heartbeat for ${now - h.lastHeartbeatMs} ms (timeout ${limit} ms)`, { headId: h.id, silentMs: now - h.lastHeartbeatMs });
      }
    }
    if (batch.length > 0) await this.store.write(batch);
    if (headsFailed > 0) this.hooks?.changed('head failed');
  }

  /** FailServer: an admin or a health checker says the server is gone; it stays failed until vsky server add. */
  async failServer(ref: string, reason: string): Promise<ServerRecord> {
    const s = this.resolveServer(ref);
    if (s.state === 'removed') throw new ConflictError(`server ${s.name} was removed from the cluster; nothing to fail`);
    const batch = this.store.batch();
    s.adminFailed = true;
    batch.putServer(s);
    this.setServerState(s, 'failed', `failed by an admin: ${reason || 'no reason given'}`, batch);
    await this.store.write(batch);
    this.hooks?.serverChanged?.(s);
    return s;
  }

  /** FailDisk: the disk is gone; it stays failed until vsky disk add. */
  async failDisk(diskId: string, reason: string): Promise<DiskRecord> {
    if (!diskId) throw new InvalidArgumentError('no disk id given: see vsky disk list');
    const d = this.disks.get(diskId);
    if (!d) throw new NotFoundError(`no disk "${diskId}": see vsky disk list`, { diskId });
    if (d.state === 'removed') throw new ConflictError(`disk ${d.id} was removed from the cluster; nothing to fail`);
    const batch = this.store.batch();
    d.adminFailed = true;
    batch.putDisk(d);
    this.setDiskState(d, 'failed', `failed by an admin: ${reason || 'no reason given'}`, batch);
    await this.store.write(batch);
    this.hooks?.diskChanged?.(d); // also when it had failed by itself before: its node keeps the admin's word
    return d;
  }

  setServerState(s: ServerRecord, state: ServerState, reason: string, batch: StoreBatch): void {
    if (s.state === state) return;
    const line = { serverId: s.id, name: s.name, from: s.state, to: state, reason };
    if (state === 'active') log.info(line, `server ${s.name} ${state}: ${reason}`);
    else log.warn(line, `server ${s.name} ${state}: ${reason}`);
    s.state = state;
    s.stateReason = reason;
    batch.putServer(s);
    batch.event(state === 'active' ? 'server.up' : `server.${state}`, `server:${s.name}`, reason, { serverId: s.id, from: line.from });
    this.syncServer(s);
    if (state !== 'active') {
      const disks = new Set(this.disksOf(s.id).map((d) => d.id));
      if (disks.size > 0) this.hooks?.disksLost(disks, `server ${s.name} ${state}: ${reason}`, batch);
    }
    this.hooks?.changed(`server ${s.name} ${state}`);
  }

  /** Starts or stops draining a disk (manager/resync/drains.ts): a draining disk takes no new chunks. */
  setDraining(d: DiskRecord, draining: boolean, reason: string, batch: StoreBatch): void {
    if (Boolean(d.draining) === draining) return;
    if (draining) d.draining = true;
    else delete d.draining;
    const s = this.server(d.serverId);
    if (!draining && s?.draining) {
      delete s.draining; // a disk of it stays: the server is no longer being removed
      batch.putServer(s);
    }
    batch.putDisk(d);
    batch.event(draining ? 'drain.started' : 'drain.cancelled', `disk:${d.id}`, reason, { server: s?.name ?? d.serverId, path: d.path });
    this.syncDisk(d);
    log.info({ diskId: d.id, serverId: d.serverId, path: d.path, draining, reason }, `disk ${d.id} ${draining ? 'draining' : 'no longer draining'}: ${reason}`);
    this.hooks?.changed(`disk ${d.id} ${draining ? 'draining' : 'no longer draining'}`);
  }

  setDiskState(d: DiskRecord, state: DiskState, reason: string, batch: StoreBatch): void {
    if (d.state === state) return;
    const line = { diskId: d.id, serverId: d.serverId, path: d.path, from: d.state, to: state, reason };
    if (state === 'active') log.info(line, `disk ${d.id} ${state}: ${reason}`);
    else log.warn(line, `disk ${d.id} ${state}: ${reason}`);
    d.state = state;
    d.stateReason = reason;
    batch.putDisk(d);
    batch.event(state === 'active' ? 'disk.up' : `disk.${state}`, `disk:${d.id}`, reason, { server: this.servers.get(d.serverId)?.name ?? d.serverId, path: d.path, from: line.from });
    this.syncDisk(d);
    if (state !== 'active') this.hooks?.disksLost(new Set([d.id]), `disk ${d.id} (${d.path}) ${state}: ${reason}`, batch);
    this.hooks?.changed(`disk ${d.id} ${state}`);
  }

  /** Folds a node's disk list into the records; with `complete`, known disks it omits are failed. */
  private applyDiskReport(s: ServerRecord, reported: DiskInfo__Output[], batch: StoreBatch, complete: boolean): void {
    const seen = new Set<string>();
    for (const info of reported) {
      if (!info.diskId) {
        log.warn({ serverId: s.id, path: info.path }, 'node reported a disk without an id; ignored');
        continue;
      }
      seen.add(info.diskId);
      this.hooks?.diskReported?.(info.diskId, info.note);
      this.written.set(info.diskId, new Map((info.written ?? []).map((w) => [w.volumeId, Number(w.bytes)])));
      const sizeProblem = info.chunkSize !== this.opts.chunkSize
        ? `chunk size ${info.chunkSize} differs from the cluster's ${this.opts.chunkSize}` : '';
      let d = this.disks.get(info.diskId);
      if (!d) {
        d = {
          id: info.diskId, serverId: s.id, path: info.path, chunkSize: info.chunkSize, chunkCount: info.chunkCount,
          state: 'active', stateReason: 'added', addedMs: this.now(),
        };
        this.disks.set(d.id, d);
        batch.putDisk(d);
        log.info({ diskId: d.id, serverId: s.id, path: d.path, chunkCount: d.chunkCount }, 'disk recorded');
        batch.event('disk.added', `disk:${d.id}`, `reported by server ${s.name}`, { server: s.name, path: d.path, chunks: d.chunkCount, chunkSize: d.chunkSize });
        this.hooks?.changed('disk added');
      } else if (d.state === 'removed') {
        continue; // only AddDisk brings a removed disk back
      }
      const before = JSON.stringify(d);
      if (d.serverId !== s.id) log.warn({ diskId: d.id, from: d.serverId, to: s.id }, 'disk moved to another server');
      Object.assign(d, { serverId: s.id, path: info.path, chunkSize: info.chunkSize });
      claimDiskIds(d, info, this.store.clusterId);
      if (info.chunkCount !== d.chunkCount) {
        if (this.model.setDisk(d.id, s.id, info.chunkCount, false)) d.chunkCount = info.chunkCount;
        else log.warn({ diskId: d.id, reported: info.chunkCount, kept: d.chunkCount }, 'node reports fewer chunks than the disk holds; keeping the old count');
      }
      if (sizeProblem) this.setDiskState(d, 'failed', sizeProblem, batch);
      else if (info.state === 'failed') this.setDiskState(d, 'failed', 'its node reports it failed', batch);
      else if (d.state === 'failed' && !d.adminFailed) this.setDiskState(d, 'active', 'its node reports it active', batch);
      if (JSON.stringify(d) !== before) batch.putDisk(d);
      this.syncDisk(d);
    }
    if (!complete) return;
    for (const d of this.disks.values()) {
      if (d.serverId === s.id && !seen.has(d.id) && d.state === 'active') {
        this.setDiskState(d, 'failed', 'not reported by its node at registration', batch);
      }
    }
  }

  /** Keeps the placement model in step with the server's state (a halted server takes no new chunks). */
  syncServer(s: ServerRecord): void {
    this.model.setServer(s.id, this.labelsOf(s), s.state === 'active' && !s.halted);
  }

  private syncDisk(d: DiskRecord): void {
    const eligible = d.state === 'active' && !d.draining && d.chunkSize === this.opts.chunkSize;
    if (!this.model.setDisk(d.id, d.serverId, d.chunkCount, eligible)) {
      log.warn({ diskId: d.id, chunkCount: d.chunkCount }, 'disk record shrank below chunks in use');
    }
    if (d.badChunks) this.model.markBad(d.id, d.badChunks);
    this.hooks?.diskChanged?.(d);
  }

  /** Bad chunks were recorded on the disk (manager/bad-chunks.ts): its node keeps them too. */
  badChunksChanged(d: DiskRecord): void {
    this.hooks?.diskChanged?.(d);
  }
}
