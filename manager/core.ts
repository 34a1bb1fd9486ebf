import { ConflictError, InvalidArgumentError } from '../shared/errors.js';
import type { SecretBox } from '../shared/security/secret-box.js';
import { moduleLogger } from '../shared/logger.js';
import { Attachments } from './attachments.js';
import { Decommission } from './decommission.js';
import { EventLog } from './events.js';
import { Failures } from './failures.js';
import { ChunkFreer, GarbageCollector } from './gc.js';
import { MapPusher } from './map-pusher.js';
import type { PeerClients } from './node-clients.js';
import { PlacementModel } from './placement.js';
import { Leases, type LeaseOptions } from './leases.js';
import { Registry } from './registry.js';
import { SegmentNotes } from './segment-notes.js';
import { StorageNotes } from './storage-notes.js';
import { DEFAULT_SCHEDULER_LIMITS, type SchedulerLimits, DEFAULT_RESYNC_OPTIONS, Resyncs } from './resync/index.js';
import { ManagerStore } from './store.js';
import { holderEpoch, type VolumeRecord } from './types.js';
import { Jobs } from './jobs/runner.js';
import { DEFAULT_JOB_RETENTION, type JobRetention } from './jobs/retention.js';
import { Volumes } from './volumes.js';
import { Snapshots, type SnapshotQuiesce } from './snapshots.js';
import { attachedSnapshotQuiesce } from './snapshot-attached.js';
import { setBackingLookup } from './views.js';
import { moveOf } from './chunk-map.js';
import { ThinSegments } from './thin/segments.js';
import { checkThresholds, DEFAULT_POOL_THRESHOLDS, PoolWatch, provisioning, type PoolLevel, type PoolThresholds } from './thin/pool.js';
import type { IntIdCounters } from '../proto/generated/vsky/common/IntIdCounters.js';

// The manager without its network face: the store loaded into memory and the
// parts that act on it, wired together. The daemon adds the gRPC server and
// timers; tests drive this directly with fake peers.

const log = moduleLogger('manager.core');

export interface CoreOptions {
  dataDir: string;
  /** Seals the secrets the database stores (iSCSI CHAP secrets; --secret-key-file); undefined: stored in clear. */
  secrets?: SecretBox;
  chunkSize: number;
  heartbeatTimeoutMs: number;
  /** Write leases expire this long after the holder's last heartbeat (default DEFAULT_LEASE_TTL_MS). */
  leaseTtlMs?: number;
  /** Hand-off timings (tests shorten them). */
  leases?: LeaseOptions;
  now?: () => number;
  allocateParallelism?: number;
  /** Bandwidth cap handed to resync executors, MiB/s per resync (default 0: unthrottled). */
  resyncMibps?: number;
  /** A running resync without progress for this long is dispatched again (default 15 s). */
  resyncProgressTimeoutMs?: number;
  /** Scheduler limits: per-disk resyncs (default 1), global cap (default 64), sources per resync (default 2). */
  resyncLimits?: Partial<SchedulerLimits>;
  /** Hot-spare mode: replacements for failed replicas only on these disks (default: anywhere in the pool). */
  spareDisks?: string[];
  /** Events the event log keeps (default 100,000; manager/events.ts). */
  eventRetention?: number;
  /** Ended job records kept: the last N per volume, and none older (manager/jobs/retention.ts). */
  jobRetention?: Partial<JobRetention>;
  /** Pool thresholds (fractions of the usable chunks in use) that raise pool.threshold events (default 0.8 and 0.95). */
  poolThresholds?: Partial<PoolThresholds>;
}

export interface StatusData {
  servers: number;
  serversActive: number;
  disks: number;
  disksActive: number;
  capacityBytes: number;
  usedBytes: number;
  volumes: number;
  heads: number;
  provisionedBytes: number;
  allocatedBytes: number;
  overcommit: number;
  poolUsedFraction: number;
  poolLevel: PoolLevel;
  poolWarn: number;
  poolCritical: number;
}

export class ManagerCore {
  /** Thin provisioning: segment allocation and free (manager/thin/). */
  thin!: ThinSegments;
  /** Snapshots and clones (manager/snapshots.ts). */
  snapshots!: Snapshots;
  /** Snapshot of an attached volume: quiesces its head, returns how to resume it (set by manager/snapshot-attached.ts). */
  quiesceForSnapshot: SnapshotQuiesce | undefined = undefined;
  /** The peers (set at open): flatten asks the holder head. */
  peers!: PeerClients;
  pool: PoolWatch | undefined;
  private constructor(
    readonly store: ManagerStore,
    readonly model: PlacementModel,
    readonly registry: Registry,
    readonly volumes: Volumes,
    readonly attachments: Attachments,
    readonly leases: Leases,
    readonly decommission: Decommission,
    readonly freer: ChunkFreer,
    readonly gc: GarbageCollector,
    readonly pusher: MapPusher,
    readonly failures: Failures,
    readonly resyncs: Resyncs,
    readonly chunkSize: number,
    /** The append-only event log (manager/events.ts): every state change, with time, target and reason. */
    readonly events: EventLog,
  ) {}

  static async open(opts: CoreOptions, peers: PeerClients): Promise<ManagerCore> {
    if (!Number.isSafeInteger(opts.chunkSize) || opts.chunkSize <= 0 || opts.chunkSize % 512 !== 0) {
      throw new InvalidArgumentError(`invalid chunk size ${opts.chunkSize}: use a positive multiple of 512 bytes, e.g. 256M`);
    }
    if (!(opts.heartbeatTimeoutMs > 0)) throw new InvalidArgumentError(`invalid heartbeat timeout ${opts.heartbeatTimeoutMs} ms`);
    const started = Date.now();
    const store = await ManagerStore.open(opts.dataDir, opts.secrets);
    try {
      const snap = await store.load();
      const loadedMs = Date.now() - started;
      // Before anything writes: batches carrying events need it to number them.
      const events = await EventLog.open(store, { retention: opts.eventRetention, now: opts.now });
      const model = new PlacementModel();
      if (opts.leaseTtlMs !== undefined && !(opts.leaseTtlMs > 0)) throw new InvalidArgumentError(`invalid lease TTL ${opts.leaseTtlMs} ms`);
      const registry = new Registry(store, model, peers, {
        chunkSize: opts.chunkSize, heartbeatTimeoutMs: opts.heartbeatTimeoutMs, leaseTtlMs: opts.leaseTtlMs, now: opts.now,
      });
      registry.load(snap);
      const freer = new ChunkFreer(store, model, registry, peers);
      const volumes = new Volumes(store, model, registry, peers, freer, { chunkSize: opts.chunkSize, allocateParallelism: opts.allocateParallelism });
      volumes.load(snap);
      freer.load(snap.toFree);
      // Left for an admin by a rebuild from storage: never placed, never freed by GC (foreign).
      for (const a of snap.setAside) {
        if (model.ownerOf(a.diskId, a.chunkIndex) !== 0) continue;
        model.claim(a.diskId, a.chunkIndex, a.volumeId);
        model.markForeign(a.diskId, a.chunkIndex, a.volumeId);
      }
      // Creates interrupted by the previous process become to-free entries
      // before anyone can talk to us; the nodes are asked by the first GC pass.
      let rolledAtStart = await volumes.rollbackStalePending();
      const gc = new GarbageCollector(freer, model, registry, peers, {
        isCreating: (id) => volumes.isCreating(id),
        nextVolumeId: () => volumes.nextVolumeId,
        rollbackStalePending: async () => {
          const n = (await volumes.rollbackStalePending()) + rolledAtStart;
          rolledAtStart = 0;
          return n;
        },
      });
      const limits = { ...DEFAULT_SCHEDULER_LIMITS, ...opts.resyncLimits };
      if (!(limits.perDisk >= 1 && limits.maxRunning >= 1 && limits.maxSources >= 1)) {
        throw new InvalidArgumentError(`invalid resync limits ${JSON.stringify(limits)}: each must be at least 1`);
      }
      const pusher = new MapPusher(volumes, registry, peers);
      const failures = new Failures(store, registry, volumes, pusher, freer);
      const resyncs = new Resyncs(store, model, registry, volumes, peers, freer, pusher, {
        throttleMibps: opts.resyncMibps ?? DEFAULT_RESYNC_OPTIONS.throttleMibps,
        progressTimeoutMs: opts.resyncProgressTimeoutMs ?? DEFAULT_RESYNC_OPTIONS.progressTimeoutMs,
        limits,
        spareDisks: opts.spareDisks,
      });
      resyncs.load(snap);
      const attachments = new Attachments(volumes, registry, peers);
      // Who tells whom (every hook only records or wakes; the work runs in resync passes):
      registry.hooks = {
        disksLost: (ids, reason, batch) => failures.disksLost(ids, reason, batch),
        changed: (reason) => {
          resyncs.planner.retryNow();
          resyncs.drains.retryNow();
          resyncs.wake(reason);
        },
      };
      failures.onStale = (reason) => resyncs.wake(reason);
      const notes = new SegmentNotes(volumes, registry, peers);
      failures.notes = notes;
      const storageNotes = new StorageNotes(volumes, registry, peers, opts.secrets);
      pusher.onChanged = (id) => {
        notes.changed(id);
        storageNotes.changed(id);
      };
      registry.hooks.diskChanged = (d) => storageNotes.diskChanged(d);
      registry.hooks.diskReported = (id, note) => storageNotes.diskReported(id, note);
      registry.hooks.serverReported = (id, note) => storageNotes.serverReported(id, note);
      registry.hooks.serverChanged = (s) => storageNotes.serverChanged(s);
      // A replaced chunk is freed only once the volume's holder has a map
      // without it: a head cut off from us (not from storage) may still use it.
      freer.hold = (r) => {
        const e = volumes.byVolumeId(r.volumeId);
        const head = e?.volume.attachedHead ? registry.head(e.volume.attachedHead) : undefined;
        return !!e && head?.state === 'active' && holderEpoch(e.volume) !== undefined && !pusher.headIsCurrent(r.volumeId);
      };
      pusher.onAcked = (id) => {
        resyncs.freeHeld(id);
        resyncs.wake('a head has the new map');
      };
      attachments.listener = {
        mapVersion: (id) => pusher.current(id),
        attached: (id, version) => {
          pusher.confirmed(id, version);
          resyncs.wake('volume attached');
        },
        detached: () => resyncs.wake('volume detached'),
      };
      volumes.hooks = {
        deleting: (id, batch) => resyncs.volumeDeleting(id, batch),
        deleted: (id) => {
          resyncs.volumeDeleted(id);
          storageNotes.forget(id);
        },
        markDeleting: (entry) => storageNotes.markDeleting(entry),
        confirmCreate: (entry) => storageNotes.confirmCreate(entry),
        createdEmpty: (entry) => storageNotes.createdEmpty(entry),
      };
      const leases = new Leases(volumes, registry, peers, attachments, opts.leases);
      attachments.events = events;
      attachments.notes = storageNotes;
      gc.notes = {
        volumeExists: (id) => volumes.byVolumeId(id) !== undefined,
        forgetDeleted: (address, ids) => storageNotes.forgetDeleted(address, ids),
        retryUnconfirmed: () => storageNotes.retryUnconfirmed(),
      };
      leases.events = events;
      gc.events = events;
      const core = new ManagerCore(store, model, registry, volumes, attachments, leases,
        new Decommission(store, registry, volumes, peers), freer, gc, pusher, failures, resyncs, opts.chunkSize, events);
      // Storage jobs (manager/jobs/): attach is refused while one runs on the volume.
      core.jobs = new Jobs(store, model, registry, volumes, peers, freer, { chunkSize: opts.chunkSize, now: opts.now, retention: { ...DEFAULT_JOB_RETENTION, ...opts.jobRetention } });
      attachments.jobGuard = (name) => core.jobs.blocking(name);
      core.jobs.mapChanged = (id) => pusher.changed(id);
      core.jobs.copies.disks = resyncs.jobDisks;
      // Flatten jobs (manager/jobs/flatten-job.ts); core.thin and core.snapshots are set below, before any worker needs them.
      core.jobs.flattens.hooks = {
        allocate: (volume, segment) => core.thin.allocateFor(volume, [segment]),
        quiesce: (v) => {
          if (!core.quiesceForSnapshot) throw new ConflictError(`volume ${v.name} is attached and this manager cannot pause it; detach it and run the flatten again`);
          return core.quiesceForSnapshot(v);
        },
        noted: (id) => core.snapshots.onLineage?.(id) ?? Promise.resolve(),
        deleteVolume: (name) => volumes.delete(name),
        resyncsOf: (id) => resyncs.book.ofVolume(id).length,
      };
      core.jobs.staleMarked = (id, why) => {
        pusher.changed(id);
        resyncs.wake(why);
      };
      await core.jobs.load();
      core.pool = new PoolWatch(checkThresholds({ ...DEFAULT_POOL_THRESHOLDS, ...opts.poolThresholds }), events);
      core.thin = new ThinSegments(store, model, registry, peers, volumes, freer, pusher);
      core.thin.events = events;
      core.thin.onChanged = () => { core.status(); };
      core.jobs.copies.allocateSegments = (volume, segments) => core.thin.allocateFor(volume, segments);
      core.thin.segmentBusy = (volumeId, segment, map) => {
        for (let slot = 0; slot < map.replicas; slot++) {
          if (resyncs.book.forSlot(volumeId, segment, slot)) return 'a resync or drain copies into it';
          if (moveOf(map, segment * map.replicas + slot)) return 'it is being drained';
        }
        return undefined;
      };
      core.snapshots = new Snapshots(store, model, registry, peers, volumes, { resyncsOf: (id) => resyncs.book.ofVolume(id).length });
      core.snapshots.resume();
      core.peers = peers;
      core.snapshots.onLineage = async (id) => {
        const e = volumes.byVolumeId(id);
        if (e) await storageNotes.accessChanged(e);
      };
      core.quiesceForSnapshot = attachedSnapshotQuiesce(volumes, registry, peers, attachments);
      setBackingLookup(volumes);
      core.status();
      log.info({
        dataDir: opts.dataDir, servers: snap.servers.length, disks: snap.disks.length, heads: snap.heads.length,
        volumes: snap.volumes.length, pendingRolledBack: snap.pending.length, toFree: freer.size, resyncs: snap.resyncs.length, latestEventSeq: events.latestSeq,
        loadMs: loadedMs, ms: Date.now() - started,
      }, 'metadata loaded');
      return core;
    } catch (err) {
      await store.close().catch(() => undefined);
      throw err;
    }
  }

  status(): StatusData {
    const servers = this.registry.listServers().filter((s) => s.state !== 'removed');
    const disks = this.registry.listDisks().filter((d) => d.state !== 'removed');
    let capacity = 0;
    let used = 0;
    let usable = 0;
    let usableUsed = 0;
    for (const d of disks) {
      const u = this.model.diskUsage(d.id);
      capacity += d.chunkCount * d.chunkSize;
      used += (u?.used ?? 0) * d.chunkSize;
      if (d.state === 'active' && !d.draining) {
        usable += d.chunkCount * d.chunkSize;
        usableUsed += (u?.used ?? 0) * d.chunkSize;
      }
    }
    const prov = provisioning(this.volumes.entries());
    const fraction = usable > 0 ? usableUsed / usable : 0;
    const level = this.pool?.check(usableUsed, usable) ?? 'ok';
    return {
      provisionedBytes: prov.provisionedBytes,
      allocatedBytes: prov.allocatedBytes,
      overcommit: usable > 0 ? prov.provisionedBytes / usable : 0,
      poolUsedFraction: fraction,
      poolLevel: level,
      poolWarn: this.pool?.thresholds.warn ?? DEFAULT_POOL_THRESHOLDS.warn,
      poolCritical: this.pool?.thresholds.critical ?? DEFAULT_POOL_THRESHOLDS.critical,
      servers: servers.length,
      serversActive: servers.filter((s) => s.state === 'active').length,
      disks: disks.length,
      disksActive: disks.filter((d) => d.state === 'active').length,
      capacityBytes: capacity,
      usedBytes: used,
      volumes: this.volumes.list().length,
      heads: this.registry.listHeads().length,
    };
  }

  /** Names of the volumes a head holds (is the lease holder of). */
  attachedTo(headId: string): string[] {
    return this.volumes.list().filter((v) => v.attachedHead === headId).map((v) => v.name).sort();
  }

  /** Names of the volumes a head is the live-migration standby of. */
  standbyOf(headId: string): string[] {
    return this.volumes.list().filter((v) => v.standbyHead === headId).map((v) => v.name).sort();
  }

  /** Starts failure handling and resync (the daemon, once it listens at `managerAddress`, where executors report). */
  start(managerAddress: string): void {
    this.resyncs.start(managerAddress);
  }

  /** Resolves once no resync pass, map push or failure follow-up is pending (tests). */
  async settle(): Promise<void> {
    for (let i = 0; i < 50; i++) {
      await new Promise((r) => setImmediate(r));
      await this.resyncs.idle();
      await this.pusher.idle();
      await new Promise((r) => setImmediate(r));
      if (this.failures.isIdle() && this.resyncs.isIdle() && this.pusher.isIdle()) return;
    }
  }

  /** Storage jobs: wipe, resize (manager/jobs/runner.ts). */
  jobs!: Jobs;

  /** The VastSky-style id counters (manager/xmlrpc/ids.ts sets it): heartbeat replies hand them to the storage nodes. */
  intIdCounters: () => IntIdCounters | undefined = () => undefined;

  async close(): Promise<void> {
    this.snapshots.close();
    await this.jobs.stop();
    this.resyncs.stop();
    await this.resyncs.idle();
    await this.pusher.idle();
    await this.store.close();
  }
}
