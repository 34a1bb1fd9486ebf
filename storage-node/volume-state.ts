import { isCounter } from '../shared/counters.js';
import { InvalidArgumentError, StaleEpochError, StaleGenerationError } from '../shared/errors.js';
import type { Chunk } from './chunk.js';
import type { VolumeEntry } from './chunk-store.js';
import { JOB_KINDS, JOB_OUTCOMES, Legality, MAX_JOB_ID_BYTES, type JobStamp } from './disk-format.js';

// Volume-wide state a manager sets on every chunk of a volume here, durably:
// segment notes (NoteSegment) and SetVolumeState.
//
// SetVolumeState (storage jobs, manager/jobs/): an epoch-checked
// compare-and-set of a volume's generation, legality and last job over every
// chunk of the volume on this node. When every chunk's generation is
// `expectedGeneration` and `epoch` is not below the volume's minimum, sets
// {generation, legality, job record} on all of them (and raises the epoch to
// `epoch`), durably (persisted and fdatasynced) before it resolves. A stale
// epoch (StaleEpochError) or another generation on any chunk
// (StaleGenerationError) changes nothing. A retry of a CAS that already
// applied (every chunk holds exactly the target state) succeeds without a
// change.

export type VolumeStateTarget = { generation: number; legality: number; volumeSize?: number; segmentCount?: number } & JobStamp;

/** Throws InvalidArgumentError for a request no chunk record could hold. */
export function validateVolumeState(volumeId: number, epoch: number, expectedGeneration: number, target: VolumeStateTarget): void {
  if (!isCounter(epoch) || !isCounter(expectedGeneration) || !isCounter(target.generation)
      || (target.legality !== Legality.LEGAL && target.legality !== Legality.DIRTY)
      || !JOB_KINDS.includes(target.jobKind) || !JOB_OUTCOMES.includes(target.jobOutcome)
      || Buffer.byteLength(target.jobId, 'utf8') > MAX_JOB_ID_BYTES
      || !(target.volumeSize === undefined || (Number.isSafeInteger(target.volumeSize) && target.volumeSize >= 0))
      || !(target.segmentCount === undefined || (Number.isInteger(target.segmentCount) && target.segmentCount >= 0 && target.segmentCount <= 0xffff_ffff))) {
    throw new InvalidArgumentError(`SetVolumeState: invalid epoch ${epoch}, generation ${expectedGeneration} -> ${target.generation}, legality ${target.legality}, `
      + `job ${target.jobId} (at most ${MAX_JOB_ID_BYTES} bytes) kind "${target.jobKind}" outcome "${target.jobOutcome}"`, { volumeId });
  }
}

/** The compare-and-set on the volume's chunks here (validated, the node's epochs current); returns the chunks set. */
export async function applyVolumeState(vol: VolumeEntry, epoch: number, expectedGeneration: number, target: VolumeStateTarget, raiseLagging: boolean): Promise<number> {
  const volumeId = vol.id;
  if (epoch < vol.epoch) throw new StaleEpochError(`SetVolumeState at epoch ${epoch} is below volume ${volumeId}'s epoch ${vol.epoch}`, { volumeId, epoch });
  const chunks = [...vol.chunks.values()];
  const applied = (c: Chunk) => c.rec.generation === target.generation && c.rec.legality === target.legality
    && (!target.volumeSize || c.rec.volumeSize === target.volumeSize) && (!target.segmentCount || c.rec.segmentCount === target.segmentCount)
    && c.rec.jobId === target.jobId && c.rec.jobKind === target.jobKind && c.rec.jobOutcome === target.jobOutcome;
  if (!chunks.every(applied)) {
    // raiseLagging: a chunk below the expected generation missed map-only bumps, not a job.
    const other = chunks.find((c) => c.rec.generation !== expectedGeneration && !(raiseLagging && c.rec.generation < expectedGeneration));
    if (other !== undefined) {
      throw new StaleGenerationError(`volume ${volumeId} is at generation ${other.rec.generation} on this node (segment ${other.rec.segment} slot ${other.rec.slot}), `
        + `not the expected ${expectedGeneration}; nothing changed`, { volumeId, expected: expectedGeneration, actual: other.rec.generation });
    }
  }
  const raising = epoch > vol.epoch;
  vol.epoch = epoch;
  for (const c of chunks) {
    if (c.rec.epoch < epoch) c.rec.epoch = epoch;
    c.rec.generation = target.generation;
    c.rec.legality = target.legality;
    c.rec.jobId = target.jobId;
    c.rec.jobKind = target.jobKind;
    c.rec.jobOutcome = target.jobOutcome;
    if (target.volumeSize) c.rec.volumeSize = target.volumeSize;
    if (target.segmentCount) c.rec.segmentCount = target.segmentCount;
  }
  // Writes admitted under an older epoch land before the new state is acknowledged (like FENCE).
  // At the holder's own epoch (an online resize, docs/jobs.md) nothing is fenced off: the holder's
  // writes go on, and waiting for a quiet moment could wait as long as the VM keeps writing.
  if (raising) await Promise.all(chunks.map((c) => c.drained(true)));
  await Promise.all(chunks.map((c) => c.persist()));
  await Promise.all(distinctDisks(chunks).map((c) => c.sync()));
  if (epoch > vol.durableEpoch) vol.durableEpoch = epoch;
  return chunks.length;
}

/**
 * The manager's note on a segment (NoteSegment): which identity slots are
 * stale, as of `mapVersion`. Kept durably with each chunk of the segment
 * here; an older or equal note changes nothing; an epoch below the
 * volume's is refused (a note from a manager that is behind). Returns the
 * chunks updated.
 */
export async function applySegmentNote(vol: VolumeEntry, segment: number, staleSlots: number, mapVersion: number, epoch: number): Promise<number> {
  if (epoch < vol.epoch) throw new StaleEpochError(`segment note at epoch ${epoch} is below volume ${vol.id}'s epoch ${vol.epoch}`, { volumeId: vol.id, epoch });
  const updated: Chunk[] = [];
  for (const c of vol.chunks.values()) {
    if (c.rec.segment !== segment || c.rec.mapVersion >= mapVersion) continue;
    c.rec.staleSlots = staleSlots;
    c.rec.mapVersion = mapVersion;
    updated.push(c);
  }
  await Promise.all(updated.map((c) => c.persist()));
  await Promise.all(distinctDisks(updated).map((c) => c.sync())); // durable before the manager acknowledges the stale mark
  return updated.length;
}

/** One chunk per disk among `chunks` (to sync each disk once). */
export function distinctDisks(chunks: Chunk[]): Chunk[] {
  const seen = new Map<string, Chunk>();
  for (const c of chunks) if (!seen.has(c.disk.id)) seen.set(c.disk.id, c);
  return [...seen.values()];
}
