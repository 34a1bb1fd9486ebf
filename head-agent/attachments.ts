import { ConflictError, NotFoundError, StaleEpochError, errorMessage } from '../shared/errors.js';
import { moduleLogger, type Logger } from '../shared/logger.js';
import type { ExportRegistry } from './engine/block-device.js';
import { NodeControlClients } from './engine/node-control-clients.js';
import { WrittenRegions } from './engine/written-regions.js';
import { mapRegionSize } from '../shared/region-bitmap.js';
import { LinearVolume, type LeaseRequester, type LeaseState, type SegmentAllocator } from './engine/linear-volume.js';
import { Mirror, MutationTracker, rejectOnReplicaFailure, type ReplicaFailureHandler } from './engine/mirror.js';
import type { LeaseClaim } from './manager-link.js';
import type { NodePool } from './engine/node-pool.js';
import { reconcileVolume } from './engine/reconcile.js';
import { loadBacking } from './backing-loader.js';
import { flattenVolume } from './engine/backing.js';
import { MAX_DATA_PAYLOAD } from '../shared/constants.js';
import { fenceVolume } from './attachments/fence.js';
import { applyMapUpdate, type MapUpdateContext } from './attachments/map-update.js';
import { buildSegments } from './attachments/segments.js';
import { validateMap, type VolumeMap } from './attachments/validate-map.js';

// The volumes attached to this head, by name: what the NBD (and later iSCSI)
// exports look up. attach() assembles the I/O engine from the manager's map,
// fences every replica node with the lease epoch (and the map's generation)
// BEFORE the volume is registered, so no write can go out under an epoch the
// nodes have not accepted, then reconciles the regions a previous holder left
// dirty (reconcile.ts), so reads may be balanced over the replicas.
// updateMap() applies the manager's new replica states in place. detach()
// flushes (unless forced) and unregisters; node connections stay pooled for
// other volumes. A timer sweeps the volumes' write-intent bits.
// Pieces: attachments/validate-map.ts (what a map must be), segments.ts
// (mirrors from a map), fence.ts (FENCE at attach), map-update.ts (UpdateMap).

export { validateMap, type VolumeMap } from './attachments/validate-map.js';

export interface AttachmentsOptions {
  pool: NodePool;
  /** What a write that failed on some replicas becomes (default: it fails). */
  failureHandler?: ReplicaFailureHandler;
  /** Largest piece sent to one replica (tests lower it). */
  maxPiece?: number;
  /** Write-intent granularity in bytes (write-intent.ts); 0 turns write-intent off. */
  intentGroupBytes?: number;
  /** How often the write-intent bits of quiet regions are cleared (default 2000 ms). */
  intentSweepMs?: number;
  /** Storage-node control clients (GetChunkRegions), shared with resync; created if omitted. */
  nodeClients?: NodeControlClients;
  /** How a standby volume asks the manager for the write lease (head-agent/lease-requester.ts). */
  leaseRequester?: LeaseRequester;
  /** How a thin volume's first write gets its segment's chunks (head-agent/thin-segments.ts). */
  segmentAllocator?: SegmentAllocator;
}

/** How Attach takes a volume (proto AttachVolumeRequest's standby and reconcile). */
export interface AttachMode {
  /** Export the volume without the lease: no fencing, no I/O to storage until granted. */
  standby?: boolean;
  /** The previous holder did not release cleanly: reconcile its write-intent regions even if attached here. */
  reconcile?: boolean;
  /** A snapshot: exported read-only, nothing fenced or reconciled (docs/snapshots.md). */
  readOnly?: boolean;
}

export const DEFAULT_INTENT_SWEEP_MS = 2000;

export interface AttachedInfo {
  name: string;
  volumeId: number;
  epoch: number;
  generation: number;
  size: number;
  lease: LeaseState;
}

export class Attachments implements ExportRegistry {
  private readonly pool: NodePool;
  private readonly failureHandler: ReplicaFailureHandler;
  private readonly maxPiece: number | undefined;
  private readonly intentGroupBytes: number | undefined;
  readonly nodeClients: NodeControlClients;
  private readonly ownsClients: boolean;
  private readonly volumes = new Map<string, LinearVolume>();
  private readonly log: Logger;
  /** Attach/detach/update run one at a time (they are rare; this keeps them simple). */
  private serial: Promise<unknown> = Promise.resolve();
  private readonly sweeper: NodeJS.Timeout;
  private readonly leaseRequester: LeaseRequester | undefined;
  /** Set by the daemon once the manager link exists (thin volumes). */
  segmentAllocator: SegmentAllocator | undefined;

  constructor(opts: AttachmentsOptions) {
    this.leaseRequester = opts.leaseRequester;
    this.segmentAllocator = opts.segmentAllocator;
    this.pool = opts.pool;
    this.failureHandler = opts.failureHandler ?? rejectOnReplicaFailure;
    this.maxPiece = opts.maxPiece;
    this.intentGroupBytes = opts.intentGroupBytes;
    this.ownsClients = opts.nodeClients === undefined;
    this.nodeClients = opts.nodeClients ?? new NodeControlClients();
    this.log = moduleLogger('head-attachments');
    this.sweeper = setInterval(() => this.sweep(), opts.intentSweepMs ?? DEFAULT_INTENT_SWEEP_MS);
    this.sweeper.unref();
  }

  /** One write-intent sweep of every volume (the timer's work; tests call it directly). */
  sweep(): Promise<number> {
    return Promise.all(this.list().map((v) => v.sweepIntent().catch((err: unknown) => {
      this.log.debug({ volume: v.name, err: errorMessage(err) }, 'write-intent sweep failed');
      return 0;
    }))).then((counts) => counts.reduce((a, b) => a + b, 0));
  }

  lookup(name: string): LinearVolume | undefined {
    return this.volumes.get(name);
  }

  list(): LinearVolume[] {
    return [...this.volumes.values()];
  }

  info(): AttachedInfo[] {
    return this.list().map((v) => ({ name: v.name, volumeId: v.volumeId, epoch: v.epoch, generation: v.generation, size: v.size, lease: v.lease }));
  }

  /**
   * Attaches `map` under lease `epoch`. Idempotent for the same epoch; a higher
   * epoch for an attached volume re-fences and takes the new map in place.
   * Fails (nothing registered) if any replica node cannot be fenced.
   * A standby attach fences nothing and leaves a volume held here as it is
   * (the lease moves only through release and a later grant).
   */
  attach(map: VolumeMap, epoch: number, mode: AttachMode = {}): Promise<LinearVolume> {
    if (mode.readOnly === true) return this.exclusive(() => this.doAttachReadOnly(map, epoch));
    return this.exclusive(() => (mode.standby === true ? this.doAttachStandby(map, epoch) : this.doAttach(map, epoch, mode.reconcile === true)));
  }

  /**
   * Gives up the write lease of a volume held here (ReleaseLease): drains,
   * flushes, becomes a standby. A manager that believes we hold an older
   * epoch than we do is refused; a volume already a standby (or fenced)
   * releases trivially. NotFoundError if not attached.
   */
  release(name: string, epoch: number): Promise<void> {
    return this.exclusive(async () => {
      const volume = this.volumes.get(name);
      if (volume === undefined) throw new NotFoundError(`volume ${name} is not attached to this head`, { volume: name });
      if (epoch < volume.epoch && volume.lease === 'held') {
        throw new StaleEpochError(`volume ${name} is held here with epoch ${volume.epoch}; a release for older epoch ${epoch} is refused`, { volume: name });
      }
      const started = Date.now();
      await volume.release();
      this.log.info({ volume: name, volumeId: volume.volumeId, epoch: volume.epoch, ms: Date.now() - started }, 'write lease released: in-flight writes flushed; now a standby');
    });
  }

  /**
   * Applies a new map of an attached volume under the same lease epoch:
   * replica states and locations change in place (requests already sent
   * complete where they went). Resyncing replicas take writes, not reads;
   * stale ones get nothing; removed ones are dropped; new ones are fenced
   * first. A replica this head saw fail, or knows stale, is never made
   * readable by a map (it may predate our report): an "in_sync" for it is
   * taken as "write to it, do not read it" until this head resynced it.
   * A larger map grows the volume (online resize, docs/jobs.md): the new
   * segments are appended and the size changes in one tick; a smaller one is
   * refused. A standby takes the holder's map whatever its own epoch.
   */
  updateMap(map: VolumeMap, epoch: number): Promise<void> {
    return this.exclusive(() => applyMapUpdate(this.mapUpdateContext(), map, epoch));
  }

  /**
   * The manager's answer to this head's AllocateSegment or FreeSegment: like
   * a map update, and the one way a segment's allocation changes on an
   * attached volume. A pushed map never allocates or frees a segment here (it
   * may predate our own allocation or free); only the answer naming it does.
   */
  applySegment(map: VolumeMap, epoch: number, segment: number): Promise<void> {
    return this.exclusive(() => applyMapUpdate(this.mapUpdateContext(), map, epoch, segment));
  }

  /**
   * Snapshot of an attached volume (docs/snapshots.md): new I/O waits, the
   * mutations in flight finish, every node is flushed. The manager then
   * commits the snapshot and attaches the volume again with its new map (a
   * newer epoch), which lets the waiting I/O go on; or resumes it (unquiesce).
   */
  quiesce(name: string, epoch: number): Promise<void> {
    return this.exclusive(async () => {
      const volume = this.volumes.get(name);
      if (volume === undefined) throw new NotFoundError(`volume ${name} is not attached to this head`, { volume: name });
      if (epoch !== volume.epoch) throw new StaleEpochError(`volume ${name} is held here with epoch ${volume.epoch}, not ${epoch}`, { volume: name });
      const started = Date.now();
      await volume.quiesce();
      this.log.info({ volume: name, volumeId: volume.volumeId, epoch, ms: Date.now() - started }, 'volume quiesced for a snapshot: new I/O waits');
    });
  }

  /** Flatten (docs/snapshots.md): copies what the volume reads from its backing into its chunks; I/O goes on. */
  async flatten(name: string, epoch: number, first = 0, count = 0): Promise<{ bytes: number; regions: number }> {
    const volume = this.volumes.get(name);
    if (volume === undefined) throw new NotFoundError(`volume ${name} is not attached to this head`, { volume: name });
    if (epoch !== volume.epoch || volume.lease !== 'held') throw new StaleEpochError(`volume ${name} is not held here with epoch ${epoch}`, { volume: name });
    if (volume.readOnly) throw new ConflictError(`volume ${name} is attached read-only (a snapshot): it is never written`, { volume: name });
    const backing = volume.backing;
    if (backing === undefined) return { bytes: 0, regions: 0 };
    const started = Date.now();
    const done = await flattenVolume(backing, volume, first, count);
    this.log.info({ volume: name, volumeId: volume.volumeId, ...done, first, count, ms: Date.now() - started }, 'flatten: regions its backing held copied into its own chunks');
    return done;
  }

  unquiesce(name: string): Promise<void> {
    return this.exclusive(async () => {
      const volume = this.volumes.get(name);
      if (volume === undefined) throw new NotFoundError(`volume ${name} is not attached to this head`, { volume: name });
      volume.unquiesce();
    });
  }

  /** The write leases held here, for the heartbeat that renews them. */
  heldLeases(): LeaseClaim[] {
    return this.list().filter((v) => v.lease === 'held').map((v) => ({ volume: v.name, epoch: v.epoch }));
  }

  /**
   * The manager gave these leases to another head (or detached the volume
   * from us): fence each volume still held here under an older epoch.
   */
  revoke(revoked: readonly LeaseClaim[]): void {
    for (const r of revoked) {
      const v = this.volumes.get(r.volume);
      if (v === undefined || v.lease !== 'held' || v.epoch >= r.epoch) continue;
      v.fence(new StaleEpochError(`the manager revoked our lease (epoch ${v.epoch}; the volume is at epoch ${r.epoch} elsewhere)`, { volume: v.name }));
    }
  }

  /** Flushes (unless `force`) and unregisters. NotFoundError if not attached. */
  detach(name: string, force = false): Promise<void> {
    return this.exclusive(() => this.doDetach(name, force));
  }

  /** Detaches everything (flushing, best effort): daemon shutdown. */
  async close(): Promise<void> {
    clearInterval(this.sweeper);
    try {
      await this.detachAll();
    } finally {
      if (this.ownsClients) this.nodeClients.close();
    }
  }

  /** Drops everything at once, without flushing or detaching (tests: a head that died). */
  abandon(): void {
    clearInterval(this.sweeper);
    this.volumes.clear();
    if (this.ownsClients) this.nodeClients.close();
  }

  private async detachAll(): Promise<void> {
    for (const name of [...this.volumes.keys()]) {
      await this.detach(name, false).catch((err: unknown) => {
        this.log.warn({ volume: name, volumeId: this.volumes.get(name)?.volumeId, err: errorMessage(err) }, 'flush on shutdown failed; detaching anyway');
        return this.detach(name, true).catch(() => undefined);
      });
    }
  }

  private async doAttach(map: VolumeMap, epoch: number, reconcile: boolean): Promise<LinearVolume> {
    validateMap(map, epoch);
    const existing = this.existing(map);
    if (existing !== undefined) {
      if (epoch < existing.epoch) {
        throw new StaleEpochError(`volume ${map.name} is attached here with epoch ${existing.epoch}; refusing older epoch ${epoch}`, { volume: map.name });
      }
      if (epoch === existing.epoch && existing.lease === 'held') return existing;
    }
    const tracker = existing?.tracker ?? new MutationTracker();
    const segments = buildSegments(this.pool, this.failureHandler, map, tracker);
    // Until the volume wires them, the mirrors' epoch is this attach's: a node
    // that cannot be fenced is reported failed under it.
    const attaching = { epoch };
    for (const m of segments) m.lease = attaching;
    await fenceVolume(map, segments, epoch, this.failureHandler, this.log);
    if (existing === undefined || reconcile) {
      // Before any read can be balanced over the replicas (rule 4).
      await reconcileVolume(map.chunkSize, segments, { clients: this.nodeClients, epoch, log: this.log });
    }
    // After reconcile: the replicas agree on what was written (docs/snapshots.md).
    const backing = await loadBacking(map, { pool: this.pool, clients: this.nodeClients, maxPiece: Math.min(this.maxPiece ?? MAX_DATA_PAYLOAD, MAX_DATA_PAYLOAD) });
    if (existing !== undefined) {
      const was = existing.lease;
      const snapshotted = existing.isQuiesced;
      existing.backing = backing;
      existing.reconfigure(segments, epoch, map.generation, 'held', map.size);
      // After a snapshot the segments are new chunks: none carries this head's write-intent marks.
      if (snapshotted) for (const m of segments) m.intent?.forget();
      existing.unquiesce();
      this.log.info({ volume: map.name, volumeId: map.volumeId, epoch, generation: map.generation, was, reconciled: reconcile },
        was === 'held' ? 'volume re-attached with a newer epoch' : 'write lease granted: replica nodes fenced with the new epoch');
      return existing;
    }
    const volume = this.register(map, epoch, segments, tracker, false);
    volume.backing = backing;
    this.log.info({ volume: map.name, volumeId: map.volumeId, epoch, generation: map.generation, segments: segments.length, backing: map.backing.map((b) => b.name) }, 'volume attached');
    return volume;
  }

  /**
   * A snapshot, read-only: its chunks are never written, so nothing is fenced
   * (reads carry no epoch) or reconciled (nothing to repair by writing); the
   * exports refuse writes. A newer epoch for it here takes the new map.
   */
  private async doAttachReadOnly(map: VolumeMap, epoch: number): Promise<LinearVolume> {
    validateMap(map, epoch);
    const existing = this.existing(map);
    if (existing !== undefined && !existing.readOnly) {
      throw new ConflictError(`volume ${map.name} is attached to this head for writing; detach it before attaching it read-only`, { volume: map.name });
    }
    if (existing !== undefined && epoch <= existing.epoch) return existing;
    const tracker = existing?.tracker ?? new MutationTracker();
    const segments = buildSegments(this.pool, this.failureHandler, map, tracker);
    const backing = await loadBacking(map, { pool: this.pool, clients: this.nodeClients, maxPiece: Math.min(this.maxPiece ?? MAX_DATA_PAYLOAD, MAX_DATA_PAYLOAD) });
    if (existing !== undefined) {
      existing.backing = backing;
      existing.reconfigure(segments, epoch, map.generation, 'held', map.size);
      return existing;
    }
    const volume = this.register(map, epoch, segments, tracker, false);
    volume.readOnly = true;
    volume.backing = backing;
    this.log.info({ volume: map.name, volumeId: map.volumeId, epoch, segments: segments.length, backing: map.backing.map((b) => b.name) },
      'volume attached read-only (a snapshot): nothing fenced, every write refused');
    return volume;
  }

  /** Live migration's destination: exported, no lease; its first I/O asks for it. */
  private async doAttachStandby(map: VolumeMap, epoch: number): Promise<LinearVolume> {
    validateMap(map, epoch);
    const existing = this.existing(map);
    if (existing !== undefined) return existing; // held or standby here already: the lease moves only by grant
    const tracker = new MutationTracker();
    const volume = this.register(map, epoch, buildSegments(this.pool, this.failureHandler, map, tracker), tracker, true);
    this.log.info({ volume: map.name, volumeId: map.volumeId, holderEpoch: epoch }, 'volume attached as a standby (live migration): the lease follows its first I/O');
    return volume;
  }

  /** The attached volume `map` names, checked to be the same volume; undefined if none. */
  private existing(map: VolumeMap): LinearVolume | undefined {
    const existing = this.volumes.get(map.name);
    if (existing === undefined) return undefined;
    if (existing.volumeId !== map.volumeId) {
      throw new ConflictError(`a different volume named ${map.name} (id ${existing.volumeId}) is attached to this head; detach it first`, { volume: map.name });
    }
    // A larger map is an online resize (docs/jobs.md); a smaller one, or another chunk size, is never applied in place.
    if (existing.size > map.size || existing.chunkSize !== map.chunkSize) {
      throw new ConflictError(`volume ${map.name} is attached here with ${existing.size} bytes in chunks of ${existing.chunkSize}; `
        + `a map of ${map.size} bytes in chunks of ${map.chunkSize} cannot be applied in place (volumes only grow); detach and attach again`, { volume: map.name });
    }
    return existing;
  }

  private register(map: VolumeMap, epoch: number, segments: Mirror[], tracker: MutationTracker, standby: boolean): LinearVolume {
    const volume = new LinearVolume({
      name: map.name, volumeId: map.volumeId, size: map.size, chunkSize: map.chunkSize, standby,
      epoch, generation: map.generation, segments, tracker, maxPiece: this.maxPiece, intentGroupBytes: this.intentGroupBytes,
      thin: map.thin === true,
    });
    volume.leaseRequester = this.leaseRequester;
    volume.allocator = this.segmentAllocator;
    volume.regions = new WrittenRegions(this.nodeClients, map.chunkSize, mapRegionSize(map));
    volume.onFenced = (v, err) => this.log.error({ volume: v.name, volumeId: v.volumeId, epoch: v.epoch, err: errorMessage(err) },
      'volume fenced: another head holds its lease now; every request on this head fails until it is attached here again');
    this.volumes.set(map.name, volume);
    return volume;
  }

  private async doDetach(name: string, force: boolean): Promise<void> {
    const volume = this.volumes.get(name);
    if (volume === undefined) throw new NotFoundError(`volume ${name} is not attached to this head`, { volume: name });
    await volume.close(force || volume.readOnly); // a read-only volume has nothing to flush
    this.volumes.delete(name);
    this.log.info({ volume: name, volumeId: volume.volumeId, force }, 'volume detached');
  }

  private mapUpdateContext(): MapUpdateContext {
    return { pool: this.pool, failureHandler: this.failureHandler, log: this.log, volumes: this.volumes };
  }

  private exclusive<T>(fn: () => Promise<T>): Promise<T> {
    const run = this.serial.then(fn, fn);
    this.serial = run.catch(() => undefined);
    return run;
  }
}
