import { IoError, StaleEpochError, errorMessage } from '../../shared/errors.js';
import type { Logger } from '../../shared/logger.js';
import type { Mirror, ReplicaFailureHandler } from '../engine/mirror.js';
import type { Replica } from '../engine/replica.js';
import type { VolumeMap } from './validate-map.js';

/**
 * FENCE once per node holding a replica, whatever the replica's state: the
 * node raises the epoch of the volume on every chunk it holds (durably, after
 * draining requests admitted under the old epoch). All in parallel; any
 * failure fails the attach.
 */
export async function fenceVolume(map: VolumeMap, segments: Mirror[], epoch: number, handler: ReplicaFailureHandler, log: Logger): Promise<void> {
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
  const degradable = handler.replicaUnreachable !== undefined
    && segments.every((m) => m.replicas.some((r) => r.readable && !unfenced.has(r.address)));
  if (degradable) {
    const taken = segments.every((m) => m.replicas.every((r) => !r.writable || !unfenced.has(r.address)
      || handler.replicaUnreachable!(m, r, unfenced.get(r.address)!)));
    if (taken) {
      log.warn({ volume: map.name, volumeId: map.volumeId, epoch, nodes: [...unfenced.keys()] }, 'attaching without replica node(s) that could not be fenced');
      return;
    }
  }
  throw new IoError(`cannot attach volume ${map.name}: ${failures.length} replica node(s) could not be fenced with epoch ${epoch}: ${failures.join('; ')}`, {
    volume: map.name, epoch,
  });
}
