import { errorMessage } from '../shared/errors.js';
import { moduleLogger } from '../shared/logger.js';
import type { PeerClients } from './node-clients.js';
import type { Registry } from './registry.js';
import { holderEpoch } from './types.js';
import { volumeMapView } from './views.js';
import type { Volumes } from './volumes.js';

// Keeps the head holding a volume up to date with its replica map (UpdateMap,
// same epoch): a replica went stale, a spare was added, a resync finished.
//
// Pushes for one volume run one at a time and always send the map as it is
// when sent, so the last one the head takes is the newest (a stale replica is
// never read again, a finished one is read again). Each change bumps the
// volume's map version (memory only); the version a head confirmed is what
// the resync scheduler checks before it starts a resync of an attached
// volume: foreground writes must reach a new replica before its copy starts.
// A change of a snapshot's map is pushed to the holders of every volume
// reading from it too (their maps carry the backing chain).

const log = moduleLogger('manager.maps');

export class MapPusher {
  private readonly version = new Map<number, number>();
  private readonly acked = new Map<number, number>();
  private readonly inFlight = new Map<number, Promise<void>>();
  private readonly again = new Set<number>();
  /** Called when a head confirmed a map (resyncs waiting for it may start). */
  onAcked?: (volumeId: number) => void;

  constructor(
    private readonly volumes: Volumes,
    private readonly registry: Registry,
    private readonly peers: PeerClients,
  ) {}

  current(volumeId: number): number {
    return this.version.get(volumeId) ?? 1;
  }

  /** The holder confirmed the map as of `version` (an attach sent it whole). */
  confirmed(volumeId: number, version: number): void {
    if (version > (this.acked.get(volumeId) ?? 0)) this.acked.set(volumeId, version);
    if (version < this.current(volumeId)) void this.push(volumeId);
  }

  /** The attached head has every change made so far. */
  headIsCurrent(volumeId: number): boolean {
    return (this.acked.get(volumeId) ?? 0) >= this.current(volumeId);
  }

  /** Every map change, after it is durable (manager/core.ts: the segment notes on storage). */
  onChanged?: (volumeId: number) => void;

  /** The map changed: tell the holder (best effort; retried by `pushStale`). */
  changed(volumeId: number): void {
    this.onChanged?.(volumeId);
    this.bump(volumeId);
    // Every map a head has carries its backing chain (docs/snapshots.md): a
    // snapshot's replicas moved, so the heads of the volumes reading from it
    // (clones, its origin, and theirs in turn) get their maps again.
    for (const id of this.readersOf(volumeId)) this.bump(id);
  }

  private bump(volumeId: number): void {
    this.version.set(volumeId, this.current(volumeId) + 1);
    void this.push(volumeId);
  }

  /** Volumes whose backing chain includes `volumeId` (transitively). */
  private readersOf(volumeId: number): number[] {
    const out: number[] = [];
    const seen = new Set<number>([volumeId]);
    for (let i = -1, at = volumeId; ; at = out[++i]!) {
      for (const d of this.volumes.dependents(at)) {
        if (!seen.has(d.id)) {
          seen.add(d.id);
          out.push(d.id);
        }
      }
      if (i + 1 >= out.length) return out;
    }
  }

  forget(volumeId: number): void {
    this.version.delete(volumeId);
    this.acked.delete(volumeId);
  }

  /** Retries every attached volume whose head has not confirmed its latest map. */
  pushStale(): void {
    for (const { volume } of this.volumes.entries()) {
      if (volume.attachedHead && !this.headIsCurrent(volume.id)) void this.push(volume.id);
    }
  }

  isIdle(): boolean {
    return this.inFlight.size === 0;
  }

  /** Resolves when no push is in flight. */
  async idle(): Promise<void> {
    while (this.inFlight.size > 0) await Promise.all([...this.inFlight.values()]);
  }

  private push(volumeId: number): Promise<void> {
    const running = this.inFlight.get(volumeId);
    if (running) {
      this.again.add(volumeId);
      return running;
    }
    const p = this.send(volumeId).finally(() => {
      this.inFlight.delete(volumeId);
      if (this.again.delete(volumeId)) void this.push(volumeId);
    });
    this.inFlight.set(volumeId, p);
    return p;
  }

  private async send(volumeId: number): Promise<void> {
    const entry = this.volumes.byVolumeId(volumeId);
    if (!entry) return;
    const { volume, map } = entry;
    const epoch = holderEpoch(volume);
    const head = volume.attachedHead ? this.registry.head(volume.attachedHead) : undefined;
    // No holder to tell; an attach in progress sends the whole map itself;
    // a failed head is not handed anything (its lease is expiring).
    if (epoch === undefined || !head || head.state !== 'active' || this.volumes.isBusy(volumeId)) return;
    const version = this.current(volumeId);
    try {
      await this.peers.head.updateMap(head.controlAddress, { map: volumeMapView(volume, map, this.registry), epoch, iscsi: volume.access });
    } catch (err) {
      log.warn({ volumeId, volume: volume.name, head: head.name, err: errorMessage(err) }, 'UpdateMap to the holder failed; retried later');
      return;
    }
    if (volume.epoch !== epoch || volume.attachedHead !== head.id) return; // re-attached meanwhile: that attach carried the map
    if (version > (this.acked.get(volumeId) ?? 0)) this.acked.set(volumeId, version);
    log.debug({ volumeId, volume: volume.name, head: head.name, version }, 'head has the new map');
    this.onAcked?.(volumeId);
  }
}
