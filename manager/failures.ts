import { ConflictError, InvalidArgumentError, StaleEpochError, TransportError } from '../shared/errors.js';
import { moduleLogger } from '../shared/logger.js';
import type { VolumeMap } from '../proto/generated/vsky/common/VolumeMap.js';
import { clearMove, segmentReplicas, setReplicaState, type SegmentReplica } from './chunk-map.js';
import type { ChunkFreer } from './gc.js';
import type { MapPusher } from './map-pusher.js';
import type { SegmentNotes } from './segment-notes.js';
import type { Registry } from './registry.js';
import type { ManagerStore, StoreBatch } from './store.js';
import { forEachReplica, holderEpoch, type ToFreeRecord, type VolumeRecord } from './types.js';
import { volumeMapView } from './views.js';
import type { VolumeEntry, Volumes } from './volumes.js';

// Failures: replicas that can no longer be trusted become stale.
//
//  - a disk or server fails or is removed (heartbeat timeout, a node's disk
//    report, FailDisk/FailServer, a forced removal): every replica on it is
//    marked stale in the batch that records the state change (the registry's
//    disksLost hook), and stays stale if the disk comes back, since it missed
//    writes; its holder heads get the new map;
//  - a head failed a write on a replica (ReportReplicaFailure): that replica
//    is marked stale durably before the reply, because the head acknowledges
//    the write only after it (rule 2: a replica that missed an acknowledged
//    write is never read). A drain target that failed a write is dropped from
//    the map in the same way (it would have become a replica); the drain
//    plans another.
// Either way the resyncs are woken to plan a replacement (manager/resync/spares.ts).

const log = moduleLogger('manager.failures');

export interface ReplicaFailureInput {
  headId: string;
  volume: string;
  segment: number;
  slot: number;
  epoch: number;
  reason: string;
}

export class Failures {
  private readonly toPush = new Set<number>();
  private flushScheduled = false;
  /** Called once stale marks are durable (manager/resync/resyncs.ts wake). */
  onStale?: (reason: string) => void;
  /** Stale marks on storage too (manager/segment-notes.ts): a head's report is answered once one is durable there. */
  notes?: SegmentNotes;

  constructor(
    private readonly store: ManagerStore,
    private readonly registry: Registry,
    private readonly volumes: Volumes,
    private readonly pusher: MapPusher,
    private readonly freer: ChunkFreer,
  ) {}

  /** The registry's disksLost hook: marks every replica on the disks stale, in the caller's batch. */
  disksLost(diskIds: ReadonlySet<string>, reason: string, batch: StoreBatch): void {
    let total = 0;
    for (const { volume, map } of this.volumes.entries()) {
      if (!map.disks.some((d) => diskIds.has(d))) continue;
      const marked: string[] = [];
      // Drain targets on the disks are dropped by the next drain pass (manager/resync/drains.ts).
      forEachReplica(map, (ref) => {
        if (diskIds.has(ref.diskId) && ref.state !== 'stale' && !ref.move) {
          setReplicaState(map, ref.r, 'stale');
          marked.push(`${ref.segment}/${ref.slot}${ref.state === 'resyncing' ? ' (was resyncing)' : ''}`);
        }
      });
      if (marked.length === 0) continue;
      batch.putChunkMap(map);
      batch.event('replica.stale', `volume:${volume.name}`, reason, { replicas: marked.length, segmentSlots: marked.slice(0, 16).join(' '), disks: [...diskIds].join(' ') });
      total += marked.length;
      this.toPush.add(volume.id);
      log.warn({ volumeId: volume.id, volume: volume.name, replicas: marked.length, segmentSlots: marked.slice(0, 16) },
        `${marked.length} replica(s) of ${volume.name} stale: ${reason}`);
    }
    if (total > 0) log.warn({ disks: [...diskIds], replicas: total }, `${total} replicas stale: ${reason}`);
    this.scheduleFlush(reason);
  }

  /**
   * A volume rebuilt from storage that no head claimed yet, reported by a head
   * at its newest epoch (the epoch came from the nodes, which only its holder
   * fenced): that head is its holder, as its heartbeat's claim would have
   * said (manager/leases.ts adopt). Its write must not fail for arriving
   * before its heartbeat.
   */
  private async claimRebuilt(volume: VolumeRecord, req: ReplicaFailureInput): Promise<void> {
    if (!volume.claimPending || volume.attachedHead || volume.standbyHead || !req.headId || !(req.epoch > 0) || req.epoch !== volume.epoch) return;
    const head = this.registry.head(req.headId);
    if (!head || head.state !== 'active') {
      // Not a refusal: the head's registration has not reached this (rebuilt) manager yet. It retries the report.
      throw new TransportError(`volume ${volume.name} was rebuilt from storage and head ${req.headId} has not registered with this manager yet: retry the report after its registration`);
    }
    volume.attachedHead = head.id;
    volume.nbdUri = head.nbdAddress ? `nbd://${head.nbdAddress}/${encodeURIComponent(volume.name)}` : '';
    delete volume.claimPending;
    await this.volumes.saveVolume(volume);
    log.warn({ volume: volume.name, volumeId: volume.id, head: head.name, epoch: volume.epoch }, 'a head reports a replica of a volume rebuilt from storage at its newest epoch: recorded as its holder');
  }

  /**
   * A head could not write a replica. Refused for a head that does not hold
   * the volume at this epoch (it was fenced; its write must fail). Replies
   * with the volume's map once the stale mark is durable.
   */
  async reportReplicaFailure(req: ReplicaFailureInput): Promise<VolumeMap> {
    const entry = this.volumes.entry(req.volume);
    const { volume, map } = entry;
    await this.claimRebuilt(volume, req);
    const holder = holderEpoch(volume);
    if (!req.headId || volume.attachedHead !== req.headId || holder === undefined || req.epoch !== holder) {
      const who = volume.attachedHead ? (this.registry.head(volume.attachedHead)?.name ?? volume.attachedHead) : 'no head';
      throw new StaleEpochError(
        `head ${req.headId || '(none)'} at epoch ${req.epoch} does not hold volume ${volume.name} (held by ${who}, epoch ${volume.epoch}): ` +
        'its lease was taken over; fail the write and stop using the volume', { volume: volume.name, epoch: req.epoch, current: volume.epoch },
      );
    }
    if (!Number.isInteger(req.segment) || req.segment < 0 || req.segment >= volume.segmentCount) {
      throw new InvalidArgumentError(`volume ${volume.name} has segments 0..${volume.segmentCount - 1}, not ${req.segment}`);
    }
    const found = segmentReplicas(map, req.segment).find((x) => x.idSlot === req.slot);
    if (!found) throw new InvalidArgumentError(`segment ${req.segment} of volume ${volume.name} has no replica with slot ${req.slot}`);
    const head = this.registry.head(req.headId)?.name ?? req.headId;
    const changed = found.move ? await this.dropMove(entry, found, head, req.reason) : await this.markStale(entry, found, head, req);
    // The write that missed the replica is acknowledged after this reply: the mark must survive the loss of our database too.
    await this.notes?.noteNow(entry, req.segment);
    if (changed) {
      this.pusher.changed(volume.id);
      this.onStale?.('replica failure reported');
    }
    return volumeMapView(volume, map, this.registry);
  }

  private async markStale(entry: VolumeEntry, x: SegmentReplica, head: string, req: ReplicaFailureInput): Promise<boolean> {
    const { volume, map } = entry;
    const batch = this.store.batch();
    if (x.state !== 'stale') {
      const others = segmentReplicas(map, req.segment).filter((o) => !o.move && o.r !== x.r && o.state === 'in_sync');
      if (x.state === 'in_sync' && others.length === 0) {
        // Nothing else holds the segment's data: marking this one stale would
        // leave nothing to read. The write reached no good copy and must fail.
        throw new ConflictError(`replica ${req.slot} of segment ${req.segment} of ${volume.name} is its last in-sync copy; ` +
          'it cannot be marked stale: fail the write instead', { volume: volume.name, segment: req.segment, slot: req.slot });
      }
      setReplicaState(map, x.r, 'stale');
      batch.putChunkMap(map);
      batch.event('replica.stale', `volume:${volume.name}`, `reported by head ${head}: ${req.reason || 'no reason given'}`,
        { segment: req.segment, slot: x.slot, idSlot: x.idSlot, was: x.state, head, epoch: req.epoch, disk: x.diskId, chunk: x.chunkIndex });
      log.warn({ volumeId: volume.id, volume: volume.name, segment: req.segment, slot: x.slot, idSlot: x.idSlot, was: x.state, head, epoch: req.epoch },
        `replica seg ${req.segment} slot ${x.slot} of ${volume.name} stale: reported by head ${head}: ${req.reason || 'no reason given'}`);
    }
    // Written even when empty: it also waits for earlier batches (a disk
    // failure may have marked this replica stale in memory a moment ago).
    await this.store.write(batch);
    return x.state !== 'stale';
  }

  /** A drain target missed a write: out of the map (and onto the to-free list) before the head acknowledges it. */
  private async dropMove(entry: VolumeEntry, x: SegmentReplica, head: string, reason: string): Promise<boolean> {
    const { volume, map } = entry;
    clearMove(map, x.r);
    const segment = Math.floor(x.r / map.replicas);
    const toFree: ToFreeRecord[] = [{ diskId: x.diskId, chunkIndex: x.chunkIndex, volumeId: volume.id, segment, idSlot: x.idSlot,
      reason: `drain target of seg ${segment} slot ${x.slot} failed a write`, sinceMs: this.registry.now() }];
    const batch = this.store.batch().putChunkMap(map);
    batch.event('drain.target_dropped', `volume:${volume.name}`, `reported failing a write by head ${head}: ${reason || 'no reason given'}; the drain picks another`,
      { segment, slot: x.slot, disk: x.diskId, chunk: x.chunkIndex, head });
    this.freer.stage(batch, toFree);
    await this.store.write(batch);
    this.freer.track(toFree);
    log.warn({ volumeId: volume.id, volume: volume.name, segment, slot: x.slot, target: `${x.diskId}#${x.chunkIndex}`, head },
      `drain target of ${volume.name} seg ${segment} slot ${x.slot} dropped: reported by head ${head}: ${reason || 'no reason given'}; the drain picks another`);
    return true;
  }

  /** No follow-up (map pushes, wake) is waiting to run. */
  isIdle(): boolean {
    return !this.flushScheduled;
  }

  async failDisk(diskId: string, reason: string): Promise<void> {
    await this.registry.failDisk(diskId, reason);
  }

  async failServer(ref: string, reason: string): Promise<void> {
    await this.registry.failServer(ref, reason);
  }

  // After the caller's batch (issued right after the hook returns) is
  // written, tell the heads and wake the planner.
  private scheduleFlush(reason: string): void {
    if (this.flushScheduled) return;
    this.flushScheduled = true;
    setImmediate(() => {
      this.store.write(this.store.batch()).catch(() => undefined).finally(() => {
        const ids = [...this.toPush];
        this.toPush.clear();
        for (const id of ids) this.pusher.changed(id);
        this.onStale?.(reason);
        this.flushScheduled = false;
      });
    });
  }
}
