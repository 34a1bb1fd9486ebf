import { ConflictError, InvalidArgumentError } from '../shared/errors.js';
import { moduleLogger } from '../shared/logger.js';
import type { Attachments } from './attachments.js';
import type { PeerClients } from './node-clients.js';
import type { Registry } from './registry.js';
import type { VolumeRecord } from './types.js';
import type { Volumes } from './volumes.js';

// `vsky volume flatten NAME` (docs/snapshots.md): the holder head copies every
// region the volume has not written and its backing chain holds data in into
// the volume's own chunks (head-agent/engine/backing.ts flattenVolume, under
// the copy-up region locks, while the volume's I/O goes on); then the manager
// drops the backing and attaches the volume again to the same head with its
// map (no backing chain) under a newer epoch. Deviation from the design: not
// a storage job (no vsky job watch, no resume after a head failure: run it
// again, it skips what is copied already); the volume must be attached.

const log = moduleLogger('manager.flatten');
const FLATTEN_TIMEOUT_MS = 6 * 3600_000;

export async function flattenVolume(
  name: string, deps: { volumes: Volumes; registry: Registry; peers: PeerClients; attachments: Attachments; noted?: (id: number) => Promise<void> },
): Promise<VolumeRecord> {
  const { volumes, registry, peers, attachments } = deps;
  // The copy runs outside the volume's exclusive section: the head's first writes to unallocated segments need AllocateSegment.
  const v = volumes.entry(name).volume;
  if (v.kind === 'snapshot') throw new InvalidArgumentError(`${name} is a snapshot: snapshots are not flattened (flatten the volumes that read from it)`, { volume: name });
  if (v.backing === undefined) throw new InvalidArgumentError(`volume ${name} has no backing: it holds all its data already; nothing to flatten`, { volume: name });
  const head = v.attachedHead ? registry.head(v.attachedHead) : undefined;
  if (!head || head.state !== 'active') {
    throw new ConflictError(`volume ${name} must be attached to an up head to be flattened (the head copies its data): vsky volume attach ${name}, then retry`, { volume: name });
  }
  const api = peers.head.flattenVolume;
  if (api === undefined) throw new ConflictError('this manager cannot ask heads to flatten');
  const started = Date.now();
  const bytes = await api(head.controlAddress, { name, epoch: v.epoch, resume: false }, FLATTEN_TIMEOUT_MS);
  const flat = await volumes.exclusive(name, async (e) => {
    if (e.volume.id !== v.id || e.volume.backing !== v.backing || e.volume.attachedHead !== head.id || e.volume.epoch !== v.epoch) {
      throw new ConflictError(`volume ${name} changed during its flatten (re-attached, moved or snapshotted): run vsky volume flatten ${name} again (what was copied is kept)`, { volume: name });
    }
    const next: VolumeRecord = { ...e.volume };
    delete next.backing;
    await volumes.saveVolume(next);
    volumes.install(next, e.map);
    await attachments.grantLocked(volumes.byVolumeId(v.id)!, head, { standby: '' });
    log.info({ volume: name, bytes, ms: Date.now() - started }, 'volume flattened: its backing is dropped');
    return next;
  });
  await deps.noted?.(flat.id).catch(() => undefined);
  return flat;
}
