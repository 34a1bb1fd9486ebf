import { ConflictError, errorMessage } from '../shared/errors.js';
import { moduleLogger } from '../shared/logger.js';
import type { Attachments } from './attachments.js';
import type { PeerClients } from './node-clients.js';
import type { Registry } from './registry.js';
import type { SnapshotQuiesce } from './snapshots.js';
import type { VolumeRecord } from './types.js';
import type { Volumes } from './volumes.js';

// Snapshot of an attached volume (docs/snapshots.md): the holder head pauses
// the volume (new I/O waits, in-flight writes finish, everything flushed:
// QuiesceVolume), the manager commits the snapshot, then attaches the volume
// to the same head again with its new map (all segments unallocated, backing
// the snapshot) under a newer epoch, which lets the waiting I/O go on. If the
// snapshot fails before its commit, the head is told to resume as it was.

const log = moduleLogger('manager.snapshots');
const QUIESCE_TIMEOUT_MS = 30_000;

export function attachedSnapshotQuiesce(volumes: Volumes, registry: Registry, peers: PeerClients, attachments: Attachments): SnapshotQuiesce {
  return async (v: VolumeRecord) => {
    const head = registry.head(v.attachedHead);
    const api = peers.head.quiesceVolume;
    if (!head || head.state !== 'active' || api === undefined) {
      throw new ConflictError(`volume ${v.name} is attached to head ${head?.name ?? v.attachedHead}, which is ${head?.state ?? 'unknown'}: `
        + `it cannot pause the volume for a snapshot; detach it (vsky volume detach ${v.name}) and retry`, { volume: v.name });
    }
    const started = Date.now();
    await api(head.controlAddress, { name: v.name, epoch: v.epoch, resume: false }, QUIESCE_TIMEOUT_MS);
    log.info({ volume: v.name, head: head.name, ms: Date.now() - started }, 'holder paused the volume for a snapshot');
    return async (committed: boolean) => {
      if (!committed) {
        await api(head.controlAddress, { name: v.name, epoch: v.epoch, resume: true }, QUIESCE_TIMEOUT_MS)
          .catch((err: unknown) => log.error({ volume: v.name, head: head.name, err: errorMessage(err) }, 'could not resume the volume after a failed snapshot; attach it again'));
        return;
      }
      const entry = volumes.byVolumeId(v.id);
      if (!entry) return;
      await attachments.grantLocked(entry, head, { standby: '' });
      log.info({ volume: v.name, head: head.name, epoch: entry.volume.epoch, ms: Date.now() - started }, 'volume resumed on its holder with the snapshot\'s new map');
    };
  };
}
