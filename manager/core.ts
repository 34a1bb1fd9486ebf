import { InvalidArgumentError } from '../shared/errors.js';
import { moduleLogger } from '../shared/logger.js';
import { Attachments } from './attachments.js';
import { Decommission } from './decommission.js';
import { ChunkFreer, GarbageCollector } from './gc.js';
import type { PeerClients } from './node-clients.js';
import { PlacementModel } from './placement.js';
import { Registry } from './registry.js';
import { ManagerStore } from './store.js';
import { Volumes } from './volumes.js';

// The manager without its network face: the store loaded into memory and the
// parts that act on it, wired together. The daemon adds the gRPC server and
// timers; tests drive this directly with fake peers.

const log = moduleLogger('manager.core');

export interface CoreOptions {
  dataDir: string;
  chunkSize: number;
  heartbeatTimeoutMs: number;
  now?: () => number;
  allocateParallelism?: number;
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
}

export class ManagerCore {
  private constructor(
    readonly store: ManagerStore,
    readonly model: PlacementModel,
    readonly registry: Registry,
    readonly volumes: Volumes,
    readonly attachments: Attachments,
    readonly decommission: Decommission,
    readonly freer: ChunkFreer,
    readonly gc: GarbageCollector,
    readonly chunkSize: number,
  ) {}

  static async open(opts: CoreOptions, peers: PeerClients): Promise<ManagerCore> {
    if (!Number.isSafeInteger(opts.chunkSize) || opts.chunkSize <= 0 || opts.chunkSize % 512 !== 0) {
      throw new InvalidArgumentError(`invalid chunk size ${opts.chunkSize}: use a positive multiple of 512 bytes, e.g. 256M`);
    }
    if (!(opts.heartbeatTimeoutMs > 0)) throw new InvalidArgumentError(`invalid heartbeat timeout ${opts.heartbeatTimeoutMs} ms`);
    const started = Date.now();
    const store = await ManagerStore.open(opts.dataDir);
    try {
      const snap = await store.load();
      const loadedMs = Date.now() - started;
      const model = new PlacementModel();
      const registry = new Registry(store, model, peers, { chunkSize: opts.chunkSize, heartbeatTimeoutMs: opts.heartbeatTimeoutMs, now: opts.now });
      registry.load(snap);
      const freer = new ChunkFreer(store, model, registry, peers);
      const volumes = new Volumes(store, model, registry, peers, freer, { chunkSize: opts.chunkSize, allocateParallelism: opts.allocateParallelism });
      volumes.load(snap);
      freer.load(snap.toFree);
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
      const core = new ManagerCore(store, model, registry, volumes, new Attachments(volumes, registry, peers),
        new Decommission(store, registry, volumes, peers), freer, gc, opts.chunkSize);
      log.info({
        dataDir: opts.dataDir, servers: snap.servers.length, disks: snap.disks.length, heads: snap.heads.length,
        volumes: snap.volumes.length, pendingRolledBack: snap.pending.length, toFree: freer.size,
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
    for (const d of disks) {
      const u = this.model.diskUsage(d.id);
      capacity += d.chunkCount * d.chunkSize;
      used += (u?.used ?? 0) * d.chunkSize;
    }
    return {
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

  /** Names of the volumes attached to a head. */
  attachedTo(headId: string): string[] {
    return this.volumes.list().filter((v) => v.attachedHead === headId).map((v) => v.name).sort();
  }

  async close(): Promise<void> {
    await this.store.close();
  }
}
