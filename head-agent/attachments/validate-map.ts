import { InvalidArgumentError, errorMessage } from '../../shared/errors.js';
import { parseHostPort } from '../../shared/units.js';
import type { VolumeMap__Output } from '../../proto/generated/vsky/common/VolumeMap.js';
import { REPLICA_STATES, type ReplicaState } from '../engine/replica.js';

/** VolumeMap as the manager sends it (decoded by proto-loader with defaults). */
export type VolumeMap = VolumeMap__Output;

export function replicaState(state: string): ReplicaState {
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
