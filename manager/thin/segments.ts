import type { VolumeMap } from '../../proto/generated/vsky/common/VolumeMap.js';
import { mayDeallocate } from '../../shared/deallocation.js';
import {
  CapacityError, ConflictError, InvalidArgumentError, StaleEpochError, VskyError, errorMessage,
} from '../../shared/errors.js';
import { moduleLogger } from '../../shared/logger.js';
import { formatSize } from '../../shared/units.js';
import type { EventLog } from '../events.js';
import type { ChunkFreer } from '../gc.js';
import type { MapPusher } from '../map-pusher.js';
import { mapLimit, type PeerClients } from '../node-clients.js';
import type { PlacementModel } from '../placement.js';
import type { PlannedChunk } from '../placement/volume-placement.js';
import type { Registry } from '../registry.js';
import type { ManagerStore } from '../store.js';
import { hasBacking, holderEpoch, isUnallocated, type ChunkMapRecord, type ToFreeRecord, type VolumeRecord } from '../types.js';
import type { VolumeEntry, Volumes } from '../volumes.js';
import { volumeMapView } from '../views.js';
import { assignSegment, segmentChunks, unassignSegment } from './segment-map.js';

// Thin provisioning (docs/thin-provisioning.md), the manager's side:
//  - AllocateSegment: the lease holder's first write to an unallocated
//    segment. Its K chunks are placed by the same placement code as a thick
//    create (distinct servers, racks while labels allow, most free first),
//    reserved in the model (so GC and other placements keep off them),
//    allocated on their nodes under the volume's epoch (the node persists
//    the identity, marked thin, before it answers), then one batch commits the
//    map. A manager killed before the commit leaves chunks no map references,
//    which GC frees (the model never heard of them after a restart).
//  - FreeSegment: the holder discarded or zeroed the whole segment on every
//    replica: one batch marks it unallocated and puts its chunks on the
//    to-free list; the nodes scrub them before anyone else can own them (rule 7).
// Both are epoch-checked (only the lease holder), serialized per volume, and
// idempotent (a retry after a lost reply gets the current map). A per-segment
// redirect-on-write (snapshots) can reuse placeSegment/assignSegment: it is a
// first write into a new set of chunks for a segment.

const log = moduleLogger('manager.thin');

/**
 * How long one node has to allocate a thin segment's chunk: well inside the
 * head's wait (--segment-allocate-timeout, 10 s), so a node that does not
 * answer leaves time to place the segment on others.
 */
export const THIN_CHUNK_TIMEOUT_MS = 3_000;
/** Placements tried for one AllocateSegment (each without the servers that failed before). */
const MAX_PLACEMENTS = 2;

export interface SegmentRequest {
  volume: string;
  segment: number;
  epoch: number;
  headId?: string;
}

export interface SegmentReply {
  map: VolumeMap;
  epoch: number;
}

export class ThinSegments {
  events?: EventLog;
  /** Called after every allocation or free (pool thresholds). */
  onChanged?: () => void;
  /** Refuses a free while a resync or drain works on the segment (manager/resync/). */
  segmentBusy?: (volumeId: number, segment: number, map: ChunkMapRecord) => string | undefined;
  private readonly chains = new Map<number, Promise<unknown>>();
  private readonly lastFullEventMs = new Map<number, number>();

  constructor(
    private readonly store: ManagerStore,
    private readonly model: PlacementModel,
    private readonly registry: Registry,
    private readonly peers: PeerClients,
    private readonly volumes: Volumes,
    private readonly freer: ChunkFreer,
    private readonly pusher: MapPusher,
  ) {}

  allocate(req: SegmentRequest): Promise<SegmentReply> {
    const e = this.check(req);
    return this.serial(e.volume.id, async () => {
      const cur = this.check(req);
      if (!isUnallocated(cur.map, req.segment)) return this.reply(cur);
      await this.allocateNow(cur, req.segment);
      return this.reply(cur);
    });
  }

  free(req: SegmentRequest): Promise<SegmentReply> {
    const e = this.check(req);
    return this.serial(e.volume.id, async () => {
      const cur = this.check(req);
      if (isUnallocated(cur.map, req.segment)) return this.reply(cur);
      await this.freeNow(cur, req.segment);
      return this.reply(cur);
    });
  }

  /**
   * Gives a detached thin volume chunks for `segments` now (a copy into it:
   * manager/jobs/copy-thin.ts). No lease: the volume is detached and its job
   * not started, so nobody writes it; serialized with the RPCs.
   */
  allocateFor(volume: string, segments: readonly number[]): Promise<void> {
    const e = this.volumes.entry(volume);
    return this.serial(e.volume.id, async () => {
      const cur = this.volumes.entry(volume);
      if (!cur.volume.thin || !cur.map.thin) return;
      for (const s of segments) if (isUnallocated(cur.map, s)) await this.allocateNow(cur, s);
    });
  }

  private reply(e: VolumeEntry): SegmentReply {
    return { map: volumeMapView(e.volume, e.map, this.registry), epoch: e.volume.epoch };
  }

  /** The volume is thin, the segment exists, and the caller holds the lease at `epoch`. */
  private check(req: SegmentRequest): VolumeEntry {
    const e = this.volumes.entry(req.volume);
    const v = e.volume;
    if (v.kind === 'snapshot') {
      throw new InvalidArgumentError(`volume ${v.name} is a snapshot (read-only): its segments are never allocated or freed`, { volume: v.name });
    }
    if (!v.thin || !e.map.thin) throw new InvalidArgumentError(`volume ${v.name} is thick: every segment has its chunks already`, { volume: v.name });
    if (!Number.isInteger(req.segment) || req.segment < 0 || req.segment >= e.map.segmentCount) {
      throw new InvalidArgumentError(`volume ${v.name} has no segment ${req.segment} (${e.map.segmentCount} segments)`, { volume: v.name, segment: req.segment });
    }
    const held = holderEpoch(v);
    if (held === undefined || held !== req.epoch || (req.headId && req.headId !== v.attachedHead)) {
      throw new StaleEpochError(`volume ${v.name}: epoch ${req.epoch} does not hold the write lease (the volume is at epoch ${v.epoch}${v.attachedHead ? '' : ', not attached'}); `
        + 'only the lease holder allocates or frees segments', { volume: v.name, epoch: req.epoch, current: v.epoch });
    }
    if (this.volumes.isBusy(v.id)) throw new ConflictError(`volume ${v.name} has an attach, detach or delete in progress; retry`, { volume: v.name });
    return e;
  }

  private serial<T>(volumeId: number, fn: () => Promise<T>): Promise<T> {
    const prev = this.chains.get(volumeId) ?? Promise.resolve();
    const run = prev.then(fn, fn);
    const tail = run.catch(() => undefined);
    this.chains.set(volumeId, tail);
    void tail.then(() => { if (this.chains.get(volumeId) === tail) this.chains.delete(volumeId); });
    return run;
  }

  /**
   * Places the segment's chunks and allocates them on their nodes. A node
   * that does not answer in time (just restarted, loaded) or refuses for a
   * reason other than space costs one placement: the segment is placed again
   * without that server, so one slow node does not use up the head's wait
   * (a first write fails with ENOSPC only when the pool has no room).
   */
  private async allocateNow(e: VolumeEntry, segment: number): Promise<void> {
    const v = e.volume;
    const started = Date.now();
    const avoid = new Set<string>();
    let chunks: PlannedChunk[];
    let lastFailure: VskyError | undefined;
    for (let attempt = 1; ; attempt++) {
      try {
        chunks = placeSegment(this.model, v, segment, avoid);
      } catch (err) {
        if (!(err instanceof CapacityError)) throw err;
        // No room without the servers that just failed: not a full pool, the caller retries.
        if (lastFailure) throw lastFailure;
        const full = new CapacityError(`pool full: volume ${v.name} segment ${segment} needs ${v.replicas} chunks of ${formatSize(v.chunkSize)} on ${v.replicas} distinct servers `
          + `and the pool has no room (${err.message}); discard unused space (fstrim), delete volumes or add disks (vsky disk add)`, { volume: v.name, segment });
        await this.poolFull(v, segment, full);
        throw full;
      }
      const failed = await this.allocateChunks(v, segment, chunks);
      if (failed.length === 0) break;
      await this.release(v, chunks, 'segment allocation failed');
      const { chunk, reason } = failed[0]!;
      const server = this.registry.server(chunk.serverId)?.name ?? chunk.serverId;
      lastFailure = new VskyError(reason instanceof VskyError && reason.code === 'ENOSPC' ? 'ENOSPC' : 'EIO',
        `volume ${v.name} segment ${segment}: allocating a chunk on server ${server} failed: ${errorMessage(reason)}; retry`,
        { volume: v.name, segment });
      if (lastFailure.code === 'ENOSPC' || attempt >= MAX_PLACEMENTS) throw lastFailure;
      for (const f of failed) avoid.add(f.chunk.serverId);
      log.warn({ volumeId: v.id, volume: v.name, segment, attempt, avoid: [...avoid].map((id) => this.registry.server(id)?.name ?? id), err: errorMessage(reason) },
        'a chunk of a thin segment could not be allocated: placing the segment again without that server');
    }
    assignSegment(e.map, segment, chunks);
    try {
      await this.store.write(this.store.batch().putChunkMap(e.map).event('segment.allocated', `volume:${v.name}`, 'first write: segment allocated',
        { volumeId: v.id, segment, epoch: v.epoch, disks: chunks.map((c) => c.diskId).join(','), servers: chunks.map((c) => this.registry.server(c.serverId)?.name ?? c.serverId).join(',') }));
    } catch (err) {
      unassignSegment(e.map, segment);
      await this.release(v, chunks, 'segment allocation not committed');
      throw err;
    }
    this.pusher.changed(v.id);
    log.info({ volumeId: v.id, volume: v.name, segment, epoch: v.epoch, ms: Date.now() - started }, 'segment allocated');
    this.onChanged?.();
  }

  /** Allocates the planned chunks on their nodes (each bounded by THIN_CHUNK_TIMEOUT_MS); returns the ones that failed. */
  private async allocateChunks(v: VolumeRecord, segment: number, chunks: PlannedChunk[]): Promise<{ chunk: PlannedChunk; reason: unknown }[]> {
    const results = await mapLimit(chunks, 8, (c) => {
      const server = this.registry.server(c.serverId)!;
      return this.peers.node.allocateChunk(server.controlAddress, {
        diskId: c.diskId, chunkIndex: c.chunkIndex,
        identity: {
          volumeId: v.id, volumeName: v.name, volumeSize: v.size, segment, slot: c.slot, segmentCount: v.segmentCount,
          replicas: v.replicas, generation: v.generation, epoch: v.epoch, lvolid: v.intId ?? 0, thin: true,
        },
      }, THIN_CHUNK_TIMEOUT_MS);
    });
    const failed: { chunk: PlannedChunk; reason: unknown }[] = [];
    results.forEach((r, i) => { if (r.status === 'rejected') failed.push({ chunk: chunks[i]!, reason: r.reason }); });
    return failed;
  }

  private async freeNow(e: VolumeEntry, segment: number): Promise<void> {
    const v = e.volume;
    const busy = this.segmentBusy?.(v.id, segment, e.map);
    if (busy) throw new ConflictError(`volume ${v.name} segment ${segment} is not freed now: ${busy}; its chunks stay (they read as zeros)`, { volume: v.name, segment });
    // A volume with a backing (a clone) never gives a segment back: it would read the backing again (shared/deallocation.ts).
    if (!mayDeallocate({ hasBacking: hasBacking(v) })) throw new ConflictError(`volume ${v.name} has a backing: its segments are never freed by a discard`, { volume: v.name, segment });
    const now = Date.now();
    const records: ToFreeRecord[] = segmentChunks(e.map, segment).map((c) => ({
      diskId: c.diskId, chunkIndex: c.chunkIndex, volumeId: v.id, segment, idSlot: c.idSlot, reason: 'segment discarded (thin)', sinceMs: now,
    }));
    const saved = structuredClone(e.map);
    unassignSegment(e.map, segment);
    const batch = this.store.batch().putChunkMap(e.map).event('segment.freed', `volume:${v.name}`, 'whole segment discarded: its chunks go back to the pool',
      { volumeId: v.id, segment, epoch: v.epoch, chunks: records.length });
    this.freer.stage(batch, records);
    try {
      await this.store.write(batch);
    } catch (err) {
      Object.assign(e.map, saved);
      throw err;
    }
    this.freer.track(records);
    this.pusher.changed(v.id);
    log.info({ volumeId: v.id, volume: v.name, segment, chunks: records.length }, 'segment freed');
    void this.freer.free(records).then(() => this.onChanged?.(), () => undefined);
    this.onChanged?.();
  }

  /** Gives back reserved chunks (some may be allocated on their nodes): to the to-free list, freed in the background. */
  private async release(v: VolumeRecord, chunks: PlannedChunk[], reason: string): Promise<void> {
    const now = Date.now();
    const records: ToFreeRecord[] = chunks.map((c) => ({ diskId: c.diskId, chunkIndex: c.chunkIndex, volumeId: v.id, reason, sinceMs: now }));
    const batch = this.store.batch();
    this.freer.stage(batch, records);
    try {
      await this.store.write(batch);
    } catch (err) {
      // Unrecorded: the model keeps them reserved until a restart, when GC frees what the nodes hold.
      log.error({ volumeId: v.id, err: errorMessage(err) }, 'could not record the chunks of a failed segment allocation');
      return;
    }
    this.freer.track(records);
    // Not waited for: the nodes scrub what they free (slow under load), and the chunks stay
    // reserved in the model until freed, so a placement meanwhile keeps off them.
    void this.freer.free(records).catch(() => undefined);
  }

  /** The pool has no room for a segment: an event (at most one per volume every 10 s) and a clear error. */
  private async poolFull(v: VolumeRecord, segment: number, err: CapacityError): Promise<void> {
    const now = Date.now();
    if (now - (this.lastFullEventMs.get(v.id) ?? 0) < 10_000) return;
    this.lastFullEventMs.set(v.id, now);
    log.warn({ volumeId: v.id, volume: v.name, segment, err: err.message }, 'pool full: a first write to a thin segment fails with ENOSPC');
    await this.events?.record('segment.allocate_failed', `volume:${v.name}`, `pool full: ${err.message}`,
      { volumeId: v.id, segment, chunkBytes: formatSize(v.chunkSize) }).catch(() => undefined);
  }
}

/** Places one segment's K chunks (reserved in the model for the volume) with the volume's spread rules, leaving out `avoidServers`. */
export function placeSegment(model: PlacementModel, v: VolumeRecord, segment: number, avoidServers?: ReadonlySet<string>): PlannedChunk[] {
  const plan = model.place({ volumeId: v.id, segmentCount: 1, replicas: v.replicas, spreadLabel: v.spreadLabel, chunkSize: v.chunkSize, avoidServers });
  return plan.chunks.map((c) => ({ ...c, segment }));
}
