import {
  ConflictError, InvalidArgumentError, IoError, NotFoundError, StaleEpochError, errorMessage,
} from '../shared/errors.js';
import { failPoint } from '../shared/fault-points.js';
import { moduleLogger, type Logger } from '../shared/logger.js';
import { parseHostPort } from '../shared/units.js';
import type { VolumeMap__Output } from '../proto/generated/vsky/common/VolumeMap.js';
import type { ExportRegistry } from './engine/block-device.js';
import { NodeControlClients } from './engine/node-control-clients.js';
import { WrittenRegions } from './engine/written-regions.js';
import { LinearVolume, type LeaseRequester, type LeaseState, type SegmentAllocator } from './engine/linear-volume.js';
import { Mirror, MutationTracker, rejectOnReplicaFailure, type ReplicaFailureHandler } from './engine/mirror.js';
import type { LeaseClaim } from './manager-link.js';
import type { NodePool } from './engine/node-pool.js';
import { reconcileVolume } from './engine/reconcile.js';
import { loadBacking } from './backing-loader.js';
import { flattenVolume } from './engine/backing.js';
import { MAX_DATA_PAYLOAD } from '../shared/constants.js';
import { REPLICA_STATES, Replica, type ReplicaState } from './engine/replica.js';

// The volumes attached to this head, by name: what the NBD (and later iSCSI)
// exports look up. attach() assembles the I/O engine from the manager's map,
// fences every replica node with the lease epoch (and the map's generation)
// BEFORE the volume is registered, so no write can go out under an epoch the
// nodes have not accepted, then reconciles the regions a previous holder left
// dirty (reconcile.ts), so reads may be balanced over the replicas.
// updateMap() applies the manager's new replica states in place. detach()
// flushes (unless forced) and unregisters; node connections stay pooled for
// other volumes. A timer sweeps the volumes' write-intent bits.

/** VolumeMap as the manager sends it (decoded by proto-loader with defaults). */
export type VolumeMap = VolumeMap__Output;

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
    return this.exclusive(() => this.doUpdateMap(map, epoch));
  }

  /**
   * The manager's answer to this head's AllocateSegment or FreeSegment: like
   * a map update, and the one way a segment's allocation changes on an
   * attached volume. A pushed map never allocates or frees a segment here (it
   * may predate our own allocation or free); only the answer naming it does.
   */
  applySegment(map: VolumeMap, epoch: number, segment: number): Promise<void> {
    return this.exclusive(() => this.doUpdateMap(map, epoch, segment));
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
    const segments = this.buildSegments(map, tracker);
    // Until the volume wires them, the mirrors' epoch is this attach's: a node
    // that cannot be fenced is reported failed under it.
    const attaching = { epoch };
    for (const m of segments) m.lease = attaching;
    await this.fence(map, segments, epoch);
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

  /** Live migration's destination: exported, no lease; its first I/O asks for it. */
  private async doAttachStandby(map: VolumeMap, epoch: number): Promise<LinearVolume> {
    validateMap(map, epoch);
    const existing = this.existing(map);
    if (existing !== undefined) return existing; // held or standby here already: the lease moves only by grant
    const tracker = new MutationTracker();
    const volume = this.register(map, epoch, this.buildSegments(map, tracker), tracker, true);
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
    volume.regions = new WrittenRegions(this.nodeClients, map.chunkSize);
    volume.onFenced = (v, err) => this.log.error({ volume: v.name, volumeId: v.volumeId, epoch: v.epoch, err: errorMessage(err) },
      'volume fenced: another head holds its lease now; every request on this head fails until it is attached here again');
    this.volumes.set(map.name, volume);
    return volume;
  }

  private async doDetach(name: string, force: boolean): Promise<void> {
    const volume = this.volumes.get(name);
    if (volume === undefined) throw new NotFoundError(`volume ${name} is not attached to this head`, { volume: name });
    await volume.close(force);
    this.volumes.delete(name);
    this.log.info({ volume: name, volumeId: volume.volumeId, force }, 'volume detached');
  }

  private async doUpdateMap(map: VolumeMap, epoch: number, segmentChanged?: number): Promise<void> {
    validateMap(map, epoch);
    const volume = this.volumes.get(map.name);
    if (volume === undefined) throw new NotFoundError(`volume ${map.name} is not attached to this head`, { volume: map.name });
    if (volume.volumeId !== map.volumeId || volume.chunkSize !== map.chunkSize) {
      throw new ConflictError(`UpdateMap for ${map.name} does not match the attached volume (id or chunk size differ); detach and attach again`, { volume: map.name });
    }
    if (map.size < volume.size) {
      throw new ConflictError(`UpdateMap for ${map.name} has ${map.size} bytes, the volume attached here ${volume.size}: volumes only grow; map refused, nothing changed`, { volume: map.name });
    }
    if (epoch < volume.epoch) {
      throw new StaleEpochError(`volume ${map.name} is attached here with epoch ${volume.epoch}; refusing a map for older epoch ${epoch}`, { volume: map.name });
    }
    // A standby does no I/O under its epoch (a grant brings the next one): it takes the holder's maps as they are.
    if (epoch > volume.epoch && volume.lease !== 'standby') {
      throw new ConflictError(`volume ${map.name} is attached here with epoch ${volume.epoch}; a map for epoch ${epoch} needs Attach (fencing)`, { volume: map.name });
    }
    const oldCount = volume.segmentCount;
    if (map.size > volume.size) failPoint('head.grow', map.name);
    // Online resize: the new segments' chunks were allocated by the manager under this epoch (durable on
    // their nodes before this map was sent), so they take writes without a fence.
    const added = map.size > volume.size ? this.buildSegments({ ...map, segments: map.segments.filter((seg) => seg.index >= oldCount) }, volume.tracker) : [];
    const plans: { mirror: Mirror; replicas: Replica[]; fresh: Replica[] }[] = [];
    for (const seg of map.segments) {
      if (seg.index >= oldCount) continue;
      const mirror = volume.segment(seg.index);
      // Thin: allocation changes only through this head's own AllocateSegment/FreeSegment answer (applySegment).
      if ((mirror.replicas.length === 0) !== (seg.replicas.length === 0) && seg.index !== segmentChanged) continue;
      const replicas: Replica[] = [];
      const fresh: Replica[] = [];
      for (const loc of [...seg.replicas].sort((a, b) => a.slot - b.slot)) {
        const kept = mirror.replicas.find((r) => r.isAt(loc));
        if (kept !== undefined) {
          replicas.push(kept);
        } else {
          const r = this.newReplica(map, seg.index, loc);
          replicas.push(r);
          fresh.push(r);
        }
      }
      plans.push({ mirror, replicas, fresh });
    }
    // New replicas (spares) take writes only once their node has our epoch.
    const unfenced = new Set<Replica>();
    const fresh = plans.flatMap((p) => p.fresh);
    const byNode = new Map<string, Replica>();
    for (const r of fresh) if (!byNode.has(r.address)) byNode.set(r.address, r);
    const fenceErrors: string[] = [];
    await Promise.all([...byNode.values()].map((r) => r.fence(epoch, map.generation).catch((err: unknown) => {
      for (const f of fresh) if (f.address === r.address) unfenced.add(f);
      fenceErrors.push(`${r.describe()}: ${errorMessage(err)}`);
    })));
    // Apply synchronously: every mirror sees the new states in the same tick.
    for (const { mirror, replicas } of plans) {
      const wasWritable = new Set(mirror.replicas.filter((r) => r.writable));
      for (const r of replicas) {
        const loc = map.segments.find((s) => s.index === mirror.index)!.replicas.find((l) => r.isAt(l))!;
        applyState(r, replicaState(loc.state), unfenced.has(r));
      }
      mirror.applyReplicas(replicas);
      // A replica that starts taking writes has none of the write-intent marks: re-mark on the next writes.
      if (replicas.some((r) => r.writable && !wasWritable.has(r))) mirror.intent?.forget();
    }
    const was = volume.size;
    if (added.length > 0) volume.grow(map.size, added); // same tick: new I/O sees the new size and its segments together
    volume.replicasChanged();
    volume.noteGeneration(map.generation);
    for (const { mirror } of plans) this.failureHandler.mapApplied?.(mirror);
    for (const mirror of added) this.failureHandler.mapApplied?.(mirror);
    if (added.length > 0) {
      this.log.info({ volume: map.name, volumeId: map.volumeId, epoch, generation: map.generation, from: was, to: map.size, segments: volume.segmentCount, lease: volume.lease }, 'volume grown (online resize)');
    } else {
      this.log.info({ volume: map.name, volumeId: map.volumeId, epoch, generation: map.generation }, 'volume map updated');
    }
    if (fenceErrors.length > 0) {
      throw new IoError(`volume ${map.name}: map applied, but new replica(s) could not be fenced and take no I/O: ${fenceErrors.join('; ')}`, { volume: map.name });
    }
  }

  private newReplica(map: VolumeMap, segment: number, loc: VolumeMap['segments'][number]['replicas'][number]): Replica {
    return new Replica(this.pool.get(loc.dataAddress), {
      volumeId: map.volumeId, volumeName: map.name, segment, slot: loc.slot,
      state: replicaState(loc.state), serverId: loc.serverId, diskId: loc.diskId,
      chunkIndex: loc.chunkIndex, controlAddress: loc.controlAddress ?? '',
    });
  }

  private buildSegments(map: VolumeMap, tracker: MutationTracker): Mirror[] {
    const bySegment = [...map.segments].sort((a, b) => a.index - b.index);
    return bySegment.map((seg) => {
      const replicas = [...seg.replicas].sort((a, b) => a.slot - b.slot).map((loc) => this.newReplica(map, seg.index, loc));
      return new Mirror(map.name, seg.index, replicas, this.failureHandler, tracker);
    });
  }

  /**
   * FENCE once per node holding a replica, whatever the replica's state: the
   * node raises the epoch of the volume on every chunk it holds (durably, after
   * draining requests admitted under the old epoch). All in parallel; any
   * failure fails the attach.
   */
  private async fence(map: VolumeMap, segments: Mirror[], epoch: number): Promise<void> {
    const targets = new Map<string, Replica>();
    for (const m of segments) {
      for (const r of m.replicas) {
        if (!targets.has(r.address)) targets.set(r.address, r);
      }
    }
    const list = [...targets.values()];
    const results = await Promise.allSettled(list.map((r) => r.fence(epoch, map.generation)));
    const failures: string[] = [];
    const unfenced = new Map<string, Error>();
    let newer: unknown;
    results.forEach((res, i) => {
      if (res.status === 'fulfilled') return;
      if (res.reason instanceof StaleEpochError) newer ??= res.reason;
      failures.push(`${list[i]!.describe()}: ${errorMessage(res.reason)}`);
      unfenced.set(list[i]!.address, res.reason instanceof Error ? res.reason : new IoError(String(res.reason)));
    });
    if (failures.length === 0) return;
    if (newer !== undefined) {
      throw new StaleEpochError(`cannot attach volume ${map.name} with epoch ${epoch}: a replica node has seen a newer epoch (${errorMessage(newer)})`, { volume: map.name, epoch });
    }
    // docs/design.md (leases): a replica that cannot be fenced is marked stale and the
    // attach goes on with the others. It becomes suspect (never read or
    // written); writes skip it and are acknowledged once the manager recorded
    // it stale (replica-failures.ts). Needs a handler that reports, and an
    // in-sync fenced replica in every segment.
    const handler = this.failureHandler;
    const degradable = handler.replicaUnreachable !== undefined
      && segments.every((m) => m.replicas.some((r) => r.readable && !unfenced.has(r.address)));
    if (degradable) {
      const taken = segments.every((m) => m.replicas.every((r) => !r.writable || !unfenced.has(r.address)
        || handler.replicaUnreachable!(m, r, unfenced.get(r.address)!)));
      if (taken) {
        this.log.warn({ volume: map.name, volumeId: map.volumeId, epoch, nodes: [...unfenced.keys()] }, 'attaching without replica node(s) that could not be fenced');
        return;
      }
    }
    throw new IoError(`cannot attach volume ${map.name}: ${failures.length} replica node(s) could not be fenced with epoch ${epoch}: ${failures.join('; ')}`, {
      volume: map.name, epoch,
    });
  }

  private exclusive<T>(fn: () => Promise<T>): Promise<T> {
    const run = this.serial.then(fn, fn);
    this.serial = run.catch(() => undefined);
    return run;
  }
}

/**
 * The state a map gives a replica this head already uses. Never makes one
 * this head saw fail (suspect) or knows missed writes (mustResync) readable:
 * the map may predate our report, or a stale mark. Resyncing or stale from the
 * manager settles a suspect replica (the manager has it out of sync).
 */
function applyState(r: Replica, next: ReplicaState, unfenced: boolean): void {
  if (unfenced || next === 'stale') {
    r.markStale();
    return;
  }
  if (next === 'in_sync' && (r.suspect || r.mustResync)) {
    if (!r.suspect) r.state = 'resyncing'; // written, never read: safe whichever map is newer
    return;
  }
  r.state = next;
  r.suspect = false;
}

function replicaState(state: string): ReplicaState {
  // An empty state (proto default) means a map from a manager that does not track states: in sync.
  return state === '' ? 'in_sync' : (state as ReplicaState);
}

/** Everything a manager (or a hostile caller) controls is checked before any engine is built. */
export function validateMap(map: VolumeMap, epoch: number): void {
  const bad = (msg: string): never => {
    throw new InvalidArgumentError(`invalid volume map${map?.name ? ` for ${map.name}` : ''}: ${msg}`, { volume: map?.name });
  };
  if (map === null || map === undefined) bad('missing');
  if (!Number.isSafeInteger(epoch) || epoch < 1) bad(`lease epoch ${epoch} must be 1..2^53-1`);
  if (typeof map.name !== 'string' || map.name.length === 0 || Buffer.byteLength(map.name) > 4096) bad('name must be 1..4096 bytes');
  if (!Number.isInteger(map.volumeId) || map.volumeId < 1 || map.volumeId > 0xffff_ffff) bad(`volume id ${map.volumeId} must be 1..2^32-1`);
  if (!Number.isSafeInteger(map.size) || map.size <= 0) bad(`size ${map.size}`);
  if (!Number.isSafeInteger(map.chunkSize) || map.chunkSize <= 0) bad(`chunk size ${map.chunkSize}`);
  const count = Math.ceil(map.size / map.chunkSize);
  if (!Array.isArray(map.segments) || map.segments.length !== count) {
    bad(`${map.segments?.length ?? 0} segments for size ${map.size} with chunk size ${map.chunkSize} (expected ${count})`);
  }
  const seen = new Set<number>();
  for (const seg of map.segments) {
    if (!Number.isInteger(seg.index) || seg.index < 0 || seg.index >= count || seen.has(seg.index)) bad(`segment index ${seg.index} missing, repeated or out of range`);
    seen.add(seg.index);
    if (!Array.isArray(seg.replicas) || seg.replicas.length > 31) bad(`segment ${seg.index} has ${seg.replicas?.length ?? 0} replicas`);
    if (seg.replicas.length === 0) {
      if (map.thin !== true) bad(`segment ${seg.index} has no replicas (only a thin volume's segments may be unallocated)`);
      continue;
    }
    const slots = new Set<number>();
    let inSync = 0;
    for (const r of seg.replicas) {
      if (!Number.isInteger(r.slot) || r.slot < 0 || r.slot > 255 || slots.has(r.slot)) bad(`segment ${seg.index}: replica slot ${r.slot} invalid or repeated`);
      slots.add(r.slot);
      try {
        parseHostPort(r.dataAddress, 'replica data address');
      } catch (err) {
        bad(`segment ${seg.index} slot ${r.slot}: ${errorMessage(err)}`);
      }
      const state = replicaState(r.state);
      if (!REPLICA_STATES.includes(state)) bad(`segment ${seg.index} slot ${r.slot}: unknown replica state "${r.state}"`);
      if (state === 'in_sync') inSync++;
    }
    if (inSync === 0) bad(`segment ${seg.index} has no in-sync replica`);
  }
}
