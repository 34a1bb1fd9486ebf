import { isCounter } from '../shared/counters.js';
import { InvalidArgumentError } from '../shared/errors.js';
import type { Chunk } from './chunk.js';
import { ChunkState, Legality, MAX_VOLUME_NAME_BYTES, emptyRecord, type ChunkRecordData } from './disk-format.js';

// Who a chunk belongs to: the identity a manager gives it (AllocateChunk,
// ReassignChunk), its validation, and the record a fresh allocation writes.

/** A chunk's identity as recorded on disk (structurally the proto ChunkIdentity). */
export interface ChunkIdentity {
  volumeId: number;
  volumeName: string;
  volumeSize: number;
  segment: number;
  slot: number;
  segmentCount: number;
  replicas: number;
  generation: number;
  epoch: number;
  /** The volume's VastSky-style integer id (0 or absent: none; a manager rebuilt from storage gives it back). */
  lvolid?: number;
  /** The volume is thin (disk-format.ts flags). */
  thin?: boolean;
  /** A snapshot's chunk: the data server refuses every write to it (disk-format.ts flags). */
  readOnly?: boolean;
  /** At allocation: 'CREATING' marks a create's chunk until the manager commits it; '' or 'LEGAL' otherwise. */
  legality?: string;
}

/** The record of a chunk freshly allocated to `id` (no region written), at least at the volume's epoch here. */
export function identityRecord(id: ChunkIdentity, regionBits: number, volumeEpoch: number): ChunkRecordData {
  const rec = emptyRecord(regionBits);
  Object.assign(rec, {
    state: ChunkState.OWNED, volumeId: id.volumeId, segment: id.segment, slot: id.slot, segmentCount: id.segmentCount,
    replicas: id.replicas, volumeSize: id.volumeSize, volumeName: id.volumeName, generation: id.generation,
    epoch: Math.max(id.epoch, volumeEpoch), lvolid: id.lvolid ?? 0, thin: id.thin === true, readOnly: id.readOnly === true,
    // A create's chunks say CREATING until the manager commits it (KeepVolumeNote committed).
    legality: id.legality === 'CREATING' ? Legality.CREATING : Legality.LEGAL,
  });
  return rec;
}

/** The chunk already holds identity `id` (an allocation retried). */
export function sameIdentity(chunk: Chunk, id: ChunkIdentity): boolean {
  const r = chunk.rec;
  return r.volumeId === id.volumeId && r.segment === id.segment && r.slot === id.slot && r.volumeName === id.volumeName
    && r.volumeSize === id.volumeSize && r.segmentCount === id.segmentCount && r.replicas === id.replicas;
}

/** Throws InvalidArgumentError unless `id` is a valid identity to allocate or reassign a chunk to. */
export function validateIdentity(id: ChunkIdentity): void {
  const u32 = (v: number) => Number.isInteger(v) && v >= 0 && v <= 0xffff_ffff;
  const bad = (what: string) => new InvalidArgumentError(`invalid chunk identity: ${what}`, { ...id });
  if (!u32(id.volumeId) || id.volumeId === 0) throw bad('volume id must be 1..2^32-1');
  if (!u32(id.segment)) throw bad('segment must be a u32');
  if (!Number.isInteger(id.slot) || id.slot < 0 || id.slot > 255) throw bad('slot must be 0..255');
  if (!u32(id.segmentCount) || !u32(id.replicas)) throw bad('segment count and replicas must be u32');
  if (!isCounter(id.generation) || !isCounter(id.epoch)) throw bad('generation and epoch must be 0..2^53-1');
  if (id.lvolid !== undefined && !u32(id.lvolid)) throw bad('lvolid must be a u32');
  if (!Number.isSafeInteger(id.volumeSize) || id.volumeSize < 0) throw bad('volume size must be a non-negative integer');
  if (Buffer.byteLength(id.volumeName, 'utf8') > MAX_VOLUME_NAME_BYTES) throw bad(`volume name longer than ${MAX_VOLUME_NAME_BYTES} bytes`);
  if (id.legality && id.legality !== 'LEGAL' && id.legality !== 'CREATING') throw bad('an allocated chunk is LEGAL or CREATING');
}
