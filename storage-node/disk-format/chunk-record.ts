import { crc32 } from 'node:zlib';
import { isCounter } from '../../shared/counters.js';
import { CorruptMetadataError } from '../../shared/errors.js';
import { isBlank, readU64, writeU64 } from './bytes.js';
import { FORMAT_VERSION, RECORD_FIXED, RECORD_FIXED_V2 } from './layout.js';

// The chunk record codec: what a disk says about one chunk (owner, identity,
// generation, epoch, legality, last job, written and dirty bitmaps), in two
// A/B slots of which the newest valid one wins. The slot layout is in
// storage-node/disk-format.ts.

const TWO_32 = 0x1_0000_0000;

/** 'VSKD': start of a valid (format version 3) chunk record slot. */
export const RECORD_MAGIC = 0x56534b44;
/** 'VSKC': start of a format version 2 chunk record slot (u32 generation and epoch). */
export const RECORD_MAGIC_V2 = 0x56534b43;
export const MAX_VOLUME_NAME_BYTES = 64;
/** Byte 39 of a record: flags of the chunk's volume (bits 2..7 reserved, 0). */
export const FLAG_THIN = 1;
export const FLAG_READ_ONLY = 2;
/** Longest storage-job id a chunk record keeps (UTF-8 bytes). */
export const MAX_JOB_ID_BYTES = 48;

/** Whether a volume's chunks hold what their generation says (oVirt's legality): DIRTY while a job changes them. */
export const Legality = { LEGAL: 0, DIRTY: 1, DELETING: 2, CREATING: 3 } as const;
/** Legality values as names (ChunkIdentity.legality on the wire). */
export const LEGALITY_NAMES = ['LEGAL', 'DIRTY', 'DELETING', 'CREATING'] as const;
/** Kinds of the last storage job recorded on a chunk (0: none). */
export const JOB_KINDS = ['', 'wipe', 'resize', 'fence', 'copy', 'flatten'] as const;
/** Outcomes of the last storage job recorded on a chunk (0: none). */
export const JOB_OUTCOMES = ['', 'running', 'succeeded', 'failed', 'fenced'] as const;
export type JobKindName = (typeof JOB_KINDS)[number];
export type JobOutcomeName = (typeof JOB_OUTCOMES)[number];

/** The last storage job that changed a chunk (all '' when none). */
export interface JobStamp {
  jobId: string;
  jobKind: JobKindName;
  jobOutcome: JobOutcomeName;
}

export const ChunkState = { FREE: 0, OWNED: 1 } as const;

/** What a chunk record says about one chunk. */
export interface ChunkRecordData {
  state: number;
  volumeId: number;
  segment: number;
  slot: number;
  segmentCount: number;
  replicas: number;
  volumeSize: number;
  volumeName: string;
  generation: number;
  epoch: number;
  /**
   * The manager's last note on this chunk's segment (rebuilding the manager
   * from storage reads it): bit i set = the replica with identity slot i is
   * stale; `mapVersion` orders the notes (0: none yet; the highest wins).
   */
  staleSlots: number;
  mapVersion: number;
  /**
   * Legality.LEGAL, or Legality.DIRTY while a storage job changes the volume (left so by an interrupted or aborted one),
   * or Legality.DELETING once a delete of the volume began (MarkVolumeDeleting): a rebuilt manager finishes the delete,
   * or Legality.CREATING from its allocation by a create until the manager committed it (KeepVolumeNote with committed):
   * a rebuilt manager rolls back a volume all of whose chunks still say so (and were never used).
   */
  legality: number;
  /** The last storage job's record (manager/jobs/). */
  jobId: string;
  jobKind: JobKindName;
  jobOutcome: JobOutcomeName;
  /** The volume's VastSky-style integer id (manager/xmlrpc/ids.ts); 0: none recorded. */
  lvolid: number;
  /**
   * The volume is thin (docs/thin-provisioning.md): its segments without
   * chunks are unallocated, not lost (a rebuild from storage reads it). Byte
   * 39, reserved as 0 before, so older records read as thick.
   */
  thin: boolean;
  /**
   * The chunk is a snapshot's (docs/snapshots.md): never written again. The
   * data server refuses WRITE, WRITE_ZEROES, DISCARD and the write-intent
   * requests on it (READ_ONLY); only a resync copy filling a new replica of
   * the snapshot (storage-node/copy/) writes it. Bit 1 of byte 39 (thin is
   * bit 0), 0 before, so older records read as writable.
   */
  readOnly: boolean;
  /** regionBits / 8 bytes; bit r set = region r has been written (else it reads as zeros). */
  bitmap: Uint8Array;
  /**
   * regionBits / 8 bytes, the write-intent bitmap: bit r set = a holder may
   * have had a write in flight in region r (MARK_DIRTY), so the replicas may
   * differ there until the next holder reconciles it (CLEAR_DIRTY).
   */
  dirty: Uint8Array;
}

export function emptyRecord(regionBits: number): ChunkRecordData {
  return {
    state: ChunkState.FREE, volumeId: 0, segment: 0, slot: 0, segmentCount: 0, replicas: 0,
    volumeSize: 0, volumeName: '', generation: 0, epoch: 0, staleSlots: 0, mapVersion: 0,
    legality: Legality.LEGAL, jobId: '', jobKind: '', jobOutcome: '', lvolid: 0, thin: false, readOnly: false, bitmap: new Uint8Array(regionBits / 8),
    dirty: new Uint8Array(regionBits / 8),
  };
}

/**
 * Encodes a record slot. `diskId` ties the record to its disk; `chunkIndex` to its place.
 * Into `out` (recordSize bytes, overwritten whole) when given, else into a new buffer.
 */
export function encodeRecord(rec: ChunkRecordData, seq: number, chunkIndex: number, diskId: Buffer, recordSize: number, out?: Buffer): Buffer {
  const buf = out === undefined ? Buffer.alloc(recordSize) : out.fill(0, 0, recordSize);
  const name = Buffer.from(rec.volumeName, 'utf8');
  if (name.length > MAX_VOLUME_NAME_BYTES) throw new CorruptMetadataError(`volume name longer than ${MAX_VOLUME_NAME_BYTES} bytes`);
  const jobId = Buffer.from(rec.jobId, 'utf8');
  const kind = JOB_KINDS.indexOf(rec.jobKind);
  const outcome = JOB_OUTCOMES.indexOf(rec.jobOutcome);
  if (jobId.length > MAX_JOB_ID_BYTES || kind < 0 || outcome < 0 || !(rec.legality >= Legality.LEGAL && rec.legality <= Legality.CREATING)) {
    throw new CorruptMetadataError(`invalid job record (id ${rec.jobId}, kind ${rec.jobKind}, outcome ${rec.jobOutcome}, legality ${rec.legality})`, { chunkIndex });
  }
  if (rec.dirty.length !== rec.bitmap.length) throw new CorruptMetadataError('dirty and written bitmaps differ in size');
  if (RECORD_FIXED + 2 * rec.bitmap.length > recordSize) throw new CorruptMetadataError('bitmaps do not fit the record slot');
  // Never write what would not read back exactly (a value above 2^53-1 makes the slot corrupt).
  if (!Number.isInteger(rec.lvolid) || rec.lvolid < 0 || rec.lvolid > 0xffff_ffff) throw new CorruptMetadataError(`invalid lvolid ${rec.lvolid}`, { chunkIndex });
  if (!isCounter(rec.generation) || !isCounter(rec.epoch) || !isCounter(rec.mapVersion)) {
    throw new CorruptMetadataError(`generation ${rec.generation}, epoch ${rec.epoch} and map version ${rec.mapVersion} must be 0..2^53-1`, { chunkIndex });
  }
  buf.writeUInt32BE(RECORD_MAGIC, 0);
  writeU64(buf, 8, seq);
  diskId.copy(buf, 16);
  buf.writeUInt32BE(chunkIndex, 32);
  buf[36] = rec.state;
  buf[37] = rec.slot;
  buf[38] = name.length;
  buf[39] = (rec.thin ? FLAG_THIN : 0) | (rec.readOnly ? FLAG_READ_ONLY : 0);
  buf.writeUInt32BE(rec.volumeId, 40);
  buf.writeUInt32BE(rec.segment, 44);
  buf.writeUInt32BE(rec.segmentCount, 48);
  buf.writeUInt32BE(rec.replicas, 52);
  writeU64(buf, 56, rec.volumeSize);
  writeU64(buf, 64, rec.generation);
  writeU64(buf, 72, rec.epoch);
  buf.writeUInt32BE(rec.bitmap.length * 8, 80);
  buf.writeUInt32BE(rec.staleSlots >>> 0, 84);
  writeU64(buf, 88, rec.mapVersion);
  name.copy(buf, 96);
  buf[160] = rec.legality;
  buf[161] = kind;
  buf[162] = outcome;
  buf[163] = jobId.length;
  buf.writeUInt32BE(rec.lvolid, 164);
  jobId.copy(buf, 168);
  buf.set(rec.bitmap, RECORD_FIXED);
  buf.set(rec.dirty, RECORD_FIXED + rec.bitmap.length);
  buf.writeUInt32BE(crc32(buf.subarray(8)), 4);
  return buf;
}

export interface DecodedRecord {
  seq: number;
  record: ChunkRecordData;
  /** Format version of the slot's layout: FORMAT_VERSION, or 2 for a slot not yet upgraded. */
  formatVersion: number;
}

/**
 * Decodes one record slot, of either layout (version 3, or version 2 on a
 * disk not yet fully upgraded: told apart by the magic). Returns undefined for
 * a blank (never written) slot; throws CorruptMetadataError for a torn or
 * foreign one, or one whose generation or epoch is above 2^53-1.
 */
export function decodeRecord(buf: Buffer, chunkIndex: number, diskId: Buffer, regionBits: number): DecodedRecord | undefined {
  if (isBlank(buf)) return undefined;
  const mapBytes = regionBits / 8;
  const magic = buf.length >= 4 ? buf.readUInt32BE(0) : 0;
  const v3 = magic === RECORD_MAGIC;
  const fixed = v3 ? RECORD_FIXED : RECORD_FIXED_V2;
  if ((!v3 && magic !== RECORD_MAGIC_V2) || buf.length < fixed + 2 * mapBytes) {
    throw new CorruptMetadataError('chunk record: bad magic', { chunkIndex });
  }
  if (crc32(buf.subarray(8)) !== buf.readUInt32BE(4)) throw new CorruptMetadataError('chunk record: checksum mismatch', { chunkIndex });
  if (!buf.subarray(16, 32).equals(diskId) || buf.readUInt32BE(32) !== chunkIndex) {
    throw new CorruptMetadataError('chunk record: belongs to another disk or chunk', { chunkIndex });
  }
  if (buf.readUInt32BE(v3 ? 80 : 72) !== regionBits) throw new CorruptMetadataError('chunk record: region bitmap size mismatch', { chunkIndex });
  const nameLength = buf[38]!;
  const state = buf[36]!;
  if (nameLength > MAX_VOLUME_NAME_BYTES || (state !== ChunkState.FREE && state !== ChunkState.OWNED)) {
    throw new CorruptMetadataError('chunk record: invalid field', { chunkIndex });
  }
  const nameAt = v3 ? 96 : 80;
  const legality = v3 ? buf[160]! : Legality.LEGAL;
  const jobKind = v3 ? JOB_KINDS[buf[161]!] : '';
  const jobOutcome = v3 ? JOB_OUTCOMES[buf[162]!] : '';
  const jobIdLength = v3 ? buf[163]! : 0;
  if (legality > Legality.CREATING || jobKind === undefined || jobOutcome === undefined || jobIdLength > MAX_JOB_ID_BYTES) {
    throw new CorruptMetadataError('chunk record: invalid job field', { chunkIndex });
  }
  return {
    seq: readU64(buf, 8),
    formatVersion: v3 ? FORMAT_VERSION : 2,
    record: {
      state,
      slot: buf[37]!,
      volumeId: buf.readUInt32BE(40),
      segment: buf.readUInt32BE(44),
      segmentCount: buf.readUInt32BE(48),
      replicas: buf.readUInt32BE(52),
      volumeSize: readU64(buf, 56),
      generation: v3 ? readCounter(buf, 64, 'generation', chunkIndex) : buf.readUInt32BE(64),
      epoch: v3 ? readCounter(buf, 72, 'epoch', chunkIndex) : buf.readUInt32BE(68),
      staleSlots: v3 ? buf.readUInt32BE(84) : 0,
      mapVersion: v3 ? readCounter(buf, 88, 'map version', chunkIndex) : 0,
      volumeName: buf.toString('utf8', nameAt, nameAt + nameLength),
      legality,
      jobId: buf.toString('utf8', 168, 168 + jobIdLength),
      jobKind,
      jobOutcome,
      lvolid: v3 ? buf.readUInt32BE(164) : 0,
      thin: (buf[39]! & FLAG_THIN) !== 0,
      readOnly: (buf[39]! & FLAG_READ_ONLY) !== 0,
      bitmap: new Uint8Array(buf.subarray(fixed, fixed + mapBytes)),
      dirty: new Uint8Array(buf.subarray(fixed + mapBytes, fixed + 2 * mapBytes)),
    },
  };
}

export interface PickedRecord {
  record: ChunkRecordData;
  seq: number;
  /** Slot (0 = A, 1 = B) holding the winning record; -1 when neither is valid. */
  newestSlot: number;
  /** Slots that hold bytes but failed validation (torn writes, corruption). */
  invalidSlots: number;
  /** Format version of the winning record's layout (2: to be upgraded); 0 when neither slot is valid. */
  formatVersion: number;
}

/** The current state of a chunk from its two slots: the newest valid one wins. */
export function pickNewest(slotA: Buffer, slotB: Buffer, chunkIndex: number, diskId: Buffer, regionBits: number): PickedRecord {
  let best: DecodedRecord | undefined;
  let newestSlot = -1;
  let invalidSlots = 0;
  const slots = [slotA, slotB];
  for (let i = 0; i < 2; i++) {
    let decoded: DecodedRecord | undefined;
    try {
      decoded = decodeRecord(slots[i]!, chunkIndex, diskId, regionBits);
    } catch (err) {
      if (!(err instanceof CorruptMetadataError)) throw err;
      invalidSlots++;
    }
    if (decoded && (best === undefined || decoded.seq > best.seq)) {
      best = decoded;
      newestSlot = i;
    }
  }
  if (best === undefined) return { record: emptyRecord(regionBits), seq: 0, newestSlot: -1, invalidSlots, formatVersion: 0 };
  // A free chunk never carries written or dirty regions: the next owner must read zeros.
  if (best.record.state === ChunkState.FREE) {
    best.record.bitmap.fill(0);
    best.record.dirty.fill(0);
  }
  return { record: best.record, seq: best.seq, newestSlot, invalidSlots, formatVersion: best.formatVersion };
}

/** A u64 generation or epoch: above 2^53-1 the record is corrupt (never truncated). */
function readCounter(buf: Buffer, at: number, what: string, chunkIndex: number): number {
  const hi = buf.readUInt32BE(at);
  if (hi > 0x1f_ffff) throw new CorruptMetadataError(`chunk record: ${what} beyond 2^53-1`, { chunkIndex, hi });
  return hi * TWO_32 + buf.readUInt32BE(at + 4);
}
