import { ConflictError, InvalidArgumentError, StaleEpochError } from '../shared/errors.js';
import { moduleLogger } from '../shared/logger.js';
import type { VolumeMap } from '../proto/generated/vsky/common/VolumeMap.js';
import { positionOf, replicaState, segmentReplicas, setReplicaState } from './chunk-map.js';
import type { MapPusher } from './map-pusher.js';
import type { Registry } from './registry.js';
import type { ManagerStore, StoreBatch } from './store.js';
import { forEachReplica, holderEpoch } from './types.js';
import { volumeMapView } from './views.js';
import type { Volumes } from './volumes.js';

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
//    write is never read).
// Either way the resyncs are woken to plan a replacement (manager/spares.ts).

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
  /** Called once stale marks are durable (manager/resyncs.ts wake). */
  onStale?: (reason: string) => void;

  constructor(
    private readonly store: ManagerStore,
    private readonly registry: Registry,
    private readonly volumes: Volumes,
    private readonly pusher: MapPusher,
  ) {}

  /** The registry's disksLost hook: marks every replica on the disks stale, in the caller's batch. */
  disksLost(diskIds: ReadonlySet<string>, reason: string, batch: StoreBatch): void {
    let total = 0;
    for (const { volume, map } of this.volumes.entries()) {
      if (!map.disks.some((d) => diskIds.has(d))) continue;
      const marked: string[] = [];
      let r = 0;
      forEachReplica(map, (ref) => {
        if (diskIds.has(ref.diskId) && ref.state !== 'stale') {
          setReplicaState(map, r, 'stale');
          marked.push(`${ref.segment}/${ref.slot}${ref.state === 'resyncing' ? ' (was resyncing)' : ''}`);
        }
        r++;
      });
      if (marked.length === 0) continue;
      batch.putChunkMap(map);
      total += marked.length;
      this.toPush.add(volume.id);
      log.warn({ volumeId: volume.id, volume: volume.name, replicas: marked.length, segmentSlots: marked.slice(0, 16) },
        `${marked.length} replica(s) of ${volume.name} stale: ${reason}`);
    }
    if (total > 0) log.warn({ disks: [...diskIds], replicas: total }, `${total} replicas stale: ${reason}`);
    this.scheduleFlush(reason);
  }

  /**
   * A head could not write a replica. Refused for a head that does not hold
   * the volume at this epoch (it was fenced; its write must fail). Replies
   * with the volume's map once the stale mark is durable.
   */
  async reportReplicaFailure(req: ReplicaFailureInput): Promise<VolumeMap> {
    const { volume, map } = this.volumes.entry(req.volume);
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
    if (!Number.isInteger(req.slot) || req.slot < 0 || req.slot >= volume.replicas) {
      throw new InvalidArgumentError(`volume ${volume.name} has replica slots 0..${volume.replicas - 1}, not ${req.slot}`);
    }
    const r = positionOf(map, req.segment, req.slot);
    const state = replicaState(map, r);
    const batch = this.store.batch();
    if (state !== 'stale') {
      const others = segmentReplicas(map, req.segment).filter((x) => x.slot !== req.slot && x.state === 'in_sync');
      if (state === 'in_sync' && others.length === 0) {
        // Nothing else holds the segment's data: marking this one stale would
        // leave nothing to read. The write reached no good copy and must fail.
        throw new ConflictError(`replica ${req.slot} of segment ${req.segment} of ${volume.name} is its last in-sync copy; ` +
          'it cannot be marked stale: fail the write instead', { volume: volume.name, segment: req.segment, slot: req.slot });
      }
      setReplicaState(map, r, 'stale');
      batch.putChunkMap(map);
      const head = this.registry.head(req.headId)?.name ?? req.headId;
      log.warn({ volumeId: volume.id, volume: volume.name, segment: req.segment, slot: req.slot, was: state, head, epoch: req.epoch },
        `replica seg ${req.segment} slot ${req.slot} of ${volume.name} stale: reported by head ${head}: ${req.reason || 'no reason given'}`);
    }
    // Written even when empty: it also waits for earlier batches (a disk
    // failure may have marked this replica stale in memory a moment ago).
    await this.store.write(batch);
    if (state !== 'stale') {
      this.pusher.changed(volume.id);
      this.onStale?.('replica failure reported');
    }
    return volumeMapView(volume, map, this.registry);
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
