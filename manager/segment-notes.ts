import { nextCounter } from '../shared/counters.js';
import { IoError, errorMessage } from '../shared/errors.js';
import { moduleLogger } from '../shared/logger.js';
import { segmentReplicas } from './chunk-map.js';
import type { PeerClients } from './node-clients.js';
import type { Registry } from './registry.js';
import type { VolumeEntry, Volumes } from './volumes.js';

// Segment notes: the manager's word on which replicas of a segment are out of
// sync, kept by the storage nodes with the segment's chunks (NoteSegment), so
// that a manager whose database was lost rebuilds it from storage without
// ever reading a stale copy as good (rules 2 and 6). A note is a bitmask of
// the identity slots not in sync (stale, resyncing, drain targets) and a
// version from a per-volume counter that only grows (VolumeRecord.mapVersion,
// persisted before any node hears of it); the highest version found wins.
//
// A stale mark is acknowledged to the head (and so the write that missed the
// replica) only once at least one in-sync replica's node holds the note
// durably: noteNow. Marks made without a head waiting (a disk or server lost)
// and resyncs that finished are noted in the background: noteLater; a head's
// later report of the same replica waits for the note (noteNow notes again
// whenever the segment's state differs from the last note made durable).

const log = moduleLogger('manager.notes');

/** Deadline of one NoteSegment call (ms). */
const NOTE_TIMEOUT_MS = 5_000;

export class SegmentNotes {
  /** "volumeId/segment" -> the bitmask last made durable on at least one in-sync node. */
  private readonly noted = new Map<string, number>();

  constructor(
    private readonly volumes: Volumes,
    private readonly registry: Registry,
    private readonly peers: PeerClients,
  ) {}

  /** Identity slots of the segment that are not in sync, as a bitmask. */
  static staleSlots(entry: VolumeEntry, segment: number): number {
    let bits = 0;
    for (const x of segmentReplicas(entry.map, segment)) if (x.state !== 'in_sync' || x.move) bits |= 1 << x.idSlot;
    return bits >>> 0;
  }

  /**
   * Makes the segment's current state durable on storage before resolving:
   * on every node holding one of its chunks, at least one of them in sync.
   * Throws IoError when no in-sync replica's node took it.
   */
  async noteNow(entry: VolumeEntry, segment: number): Promise<void> {
    const bits = SegmentNotes.staleSlots(entry, segment);
    const key = `${entry.volume.id}/${segment}`;
    if ((this.noted.get(key) ?? 0) === bits) return; // a chunk without a note reads as all in sync
    const { volume } = entry;
    volume.mapVersion = nextCounter(volume.mapVersion ?? 0, `volume ${volume.name}'s map version`);
    const version = volume.mapVersion;
    await this.volumes.saveVolume(volume); // versions never repeat, even across a manager restart
    const replicas = segmentReplicas(entry.map, segment);
    const byNode = new Map<string, boolean>();
    for (const x of replicas) {
      const server = this.registry.serverOfDisk(x.diskId);
      if (!server || server.state === 'removed') continue;
      const inSync = x.state === 'in_sync' && !x.move;
      byNode.set(server.controlAddress, (byNode.get(server.controlAddress) ?? false) || inSync);
    }
    const req = { volumeId: volume.id, segment, staleSlots: bits, mapVersion: version, epoch: volume.epoch };
    const targets = [...byNode.entries()];
    const results = await Promise.allSettled(targets.map(([address]) => this.peers.node.noteSegment(address, req, NOTE_TIMEOUT_MS)));
    const tookIt = targets.filter(([, inSync], i) => inSync && results[i]!.status === 'fulfilled').length;
    if (tookIt === 0) {
      const why = results.map((r, i) => `${targets[i]![0]}: ${r.status === 'rejected' ? errorMessage(r.reason) : 'ok'}`).join('; ');
      throw new IoError(`no in-sync replica's node of segment ${segment} of ${volume.name} recorded the stale mark (${why}); the write fails`, {
        volume: volume.name, segment,
      });
    }
    if (SegmentNotes.staleSlots(entry, segment) === bits) this.noted.set(key, bits); // unless it changed meanwhile
    log.debug({ volume: volume.name, segment, staleSlots: bits, mapVersion: version, nodes: tookIt }, 'segment note durable');
  }

  /** Notes these segments in the background (nobody waits); failures are logged, a later noteNow retries. */
  noteLater(entry: VolumeEntry, segments: Iterable<number>): void {
    for (const segment of new Set(segments)) {
      this.noteNow(entry, segment).catch((err: unknown) => {
        log.warn({ volume: entry.volume.name, segment, err: errorMessage(err) }, 'segment note not recorded on storage yet; retried with the next change');
      });
    }
  }

  /** The volume's map changed (MapPusher.changed): notes every segment whose state differs from its last note, in the background. */
  changed(volumeId: number): void {
    const entry = this.volumes.byVolumeId(volumeId);
    if (!entry) return;
    const segments: number[] = [];
    for (let s = 0; s < entry.volume.segmentCount; s++) {
      if (SegmentNotes.staleSlots(entry, s) !== (this.noted.get(`${volumeId}/${s}`) ?? 0)) segments.push(s);
    }
    if (segments.length > 0) this.noteLater(entry, segments);
  }

  forget(volumeId: number): void {
    for (const key of this.noted.keys()) if (key.startsWith(`${volumeId}/`)) this.noted.delete(key);
  }
}
