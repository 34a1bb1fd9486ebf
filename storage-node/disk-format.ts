import { crc32 } from 'node:zlib';
import { isCounter } from '../shared/counters.js';
import { CorruptMetadataError } from '../shared/errors.js';

// The self-describing on-disk format of a storage-node disk, as pure codecs
// (no I/O). Everything a node or a manager needs to know about a disk is read
// back from the disk itself:
//
//   [0, 4 KiB)                superblock: disk UUID, format version, geometry
//   [4 KiB, tableEnd)         chunk table: per chunk two record slots (A, B)
//                             (fixed fields, written-region bitmap, dirty bitmap)
//   [dataOffset, ...)         chunk data, chunk i at dataOffset + i * chunkSize
//
// Crash safety of the chunk table: a record update writes the slot that does
// NOT hold the newest valid record, with a higher sequence number and a CRC.
// A kill (or power loss) mid-write tears at most that slot; on open the newest
// slot whose CRC checks wins, so a torn update falls back to the previous
// state. Numbers are big-endian, like the data protocol.
//
// Chunk record slot, format version 3 (all big-endian):
//   0   u32 magic 'VSKD'        4  u32 CRC-32 of bytes [8, slot end)
//   8   u64 sequence            16 disk UUID (16 bytes)
//   32  u32 chunk index         36 u8 state  37 u8 slot  38 u8 name length  39 u8 flags (bit 0: thin volume)
//   40  u32 volume id           44 u32 segment   48 u32 segment count   52 u32 replicas
//   56  u64 volume size
//   64  u64 volume generation   (0..2^53-1; above: the slot is corrupt)
//   72  u64 lease epoch         (0..2^53-1; above: the slot is corrupt)
//   80  u32 region bits         84 u32 stale slots   88 u64 map version (the manager's note on the segment)
//   96  volume name (UTF-8, 64 bytes)
//   160 u8 legality (0 LEGAL, 1 DIRTY, 2 DELETING, 3 CREATING)   161 u8 last job's kind   162 u8 last job's outcome   163 u8 job id length
//   164 u32 lvolid (the volume's VastSky-style integer id; 0: none)   168 last job's id (UTF-8, 48 bytes)   216 u64 reserved (0)
//   224 written-region bitmap (regionBits / 8 bytes), then the dirty bitmap (same size)
// then zero padding to a whole number of sectors.
//
// Format versions: 1 had only the written-region bitmap; 2 added the
// write-intent (dirty) bitmap right after it (docs/design.md rule 4); 3 widens the
// generation and the epoch from u32 to u64 (they never wrap: shared/counters.ts),
// which grows the fixed part of a record from 144 to 160 bytes (magic 'VSKD';
// a version-2 record has the magic 'VSKC', u32 generation at 64, u32 epoch at
// 68, region bits at 72, name at 80, bitmaps at 144). No version-1 disk was
// ever deployed, so version 1 is refused rather than converted. A version-2
// disk is upgraded in place when it is opened (storage-node/disk.ts): its
// record slots (1536 bytes for 4096 regions) have room for the wider record,
// so the geometry does not change; every record is rewritten as version 3 by
// an ordinary A/B update, made durable, and only then does the superblock say
// 3. Version 3 (still unreleased) also carries the storage-job fields (legality
// and the last job's record, manager/jobs/): its fixed part is 224 bytes, which
// still fits the 1536-byte slots of 4096 regions. A crash midway leaves a version-2 superblock over a mix of records, which
// decodeRecord reads either way (by their magic), and the next open finishes
// the job. The lvolid (docs/xmlrpc.md) took a u32 that version 3 had reserved
// as 0, so a version-3 record written before it reads as "no lvolid" and the
// format did not change. A version-2 disk whose slots are too small for version-3 records
// (never made by this code: its region bits are always 4096) is refused.

export const SUPERBLOCK_SIZE = 4096;
export const FORMAT_VERSION = 3;
/** Oldest format version a node still opens: upgraded in place to FORMAT_VERSION (storage-node/disk.ts). */
export const OLDEST_UPGRADABLE_FORMAT_VERSION = 2;
/** "VSKYDISK": tells our disks apart from foreign data. */
export const SUPERBLOCK_MAGIC = Buffer.from('VSKYDISK', 'ascii');
/** Bytes of the superblock covered by its CRC (the CRC sits right after them). */
const SB_CRC_AT = 124;
/** 'VSKD': start of a valid (format version 3) chunk record slot. */
export const RECORD_MAGIC = 0x56534b44;
/** 'VSKC': start of a format version 2 chunk record slot (u32 generation and epoch). */
export const RECORD_MAGIC_V2 = 0x56534b43;
/** Fixed part of a record slot; the written-region bitmap then the dirty bitmap follow it. */
const RECORD_FIXED = 224;
/** Fixed part of a version-2 record slot. */
const RECORD_FIXED_V2 = 144;
export const MAX_VOLUME_NAME_BYTES = 64;
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
/** Record slots are whole sectors so one slot never shares a sector with another. */
const SECTOR = 512;
/** Chunk data starts on this boundary (keeps O_DIRECT and device alignment simple). */
export const DATA_ALIGN = 1024 * 1024;

const TWO_32 = 0x1_0000_0000;

export interface Superblock {
  diskId: string;
  formatVersion: number;
  chunkSize: number;
  chunkCount: number;
  /** Bits in each chunk's written-region bitmap (region size = chunkSize / regionBits). */
  regionBits: number;
  /** Bytes per record slot (two slots per chunk). */
  recordSize: number;
  tableOffset: number;
  dataOffset: number;
  /** Size of the file/device when it was formatted. */
  diskSize: number;
  createdMs: number;
  /**
   * The cluster this disk belongs to (the manager's cluster id, stamped at
   * the node's first registration), '' while it belongs to none: a manager
   * never adopts a disk of another cluster. Bytes 88..104 of the superblock,
   * all zero for none (so disks formatted before it existed read as none).
   */
  clusterId: string;
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
  /** regionBits / 8 bytes; bit r set = region r has been written (else it reads as zeros). */
  bitmap: Uint8Array;
  /**
   * regionBits / 8 bytes, the write-intent bitmap: bit r set = a holder may
   * have had a write in flight in region r (MARK_DIRTY), so the replicas may
   * differ there until the next holder reconciles it (CLEAR_DIRTY).
   */
  dirty: Uint8Array;
}

export interface Layout {
  chunkCount: number;
  recordSize: number;
  tableOffset: number;
  dataOffset: number;
}

/** Bytes per record slot of a disk of `formatVersion` (default: the current one). */
export function recordSizeFor(regionBits: number, formatVersion = FORMAT_VERSION): number {
  return alignUp((formatVersion >= 3 ? RECORD_FIXED : RECORD_FIXED_V2) + 2 * (regionBits / 8), SECTOR);
}

/** Geometry of a disk of `diskSize` bytes: as many chunks as fit after the table. */
export function computeLayout(diskSize: number, chunkSize: number, regionBits: number, formatVersion = FORMAT_VERSION): Layout {
  if (!Number.isSafeInteger(chunkSize) || chunkSize <= 0 || chunkSize % regionBits !== 0 || chunkSize % 4096 !== 0) {
    throw new CorruptMetadataError(`chunk size ${chunkSize} must be a positive multiple of 4096 and of ${regionBits}`, { chunkSize });
  }
  const recordSize = recordSizeFor(regionBits, formatVersion);
  const tableOffset = SUPERBLOCK_SIZE;
  const dataOffsetFor = (n: number) => alignUp(tableOffset + n * 2 * recordSize, DATA_ALIGN);
  let chunkCount = Math.max(0, Math.floor((diskSize - DATA_ALIGN) / chunkSize));
  while (chunkCount > 0 && dataOffsetFor(chunkCount) + chunkCount * chunkSize > diskSize) chunkCount--;
  return { chunkCount, recordSize, tableOffset, dataOffset: dataOffsetFor(chunkCount) };
}

export function encodeSuperblock(sb: Superblock): Buffer {
  const buf = Buffer.alloc(SUPERBLOCK_SIZE);
  SUPERBLOCK_MAGIC.copy(buf, 0);
  buf.writeUInt32BE(sb.formatVersion, 8);
  buf.writeUInt32BE(SB_CRC_AT, 12);
  uuidToBytes(sb.diskId).copy(buf, 16);
  writeU64(buf, 32, sb.chunkSize);
  buf.writeUInt32BE(sb.chunkCount, 40);
  buf.writeUInt32BE(sb.regionBits, 44);
  buf.writeUInt32BE(sb.recordSize, 48);
  writeU64(buf, 56, sb.tableOffset);
  writeU64(buf, 64, sb.dataOffset);
  writeU64(buf, 72, sb.diskSize);
  writeU64(buf, 80, sb.createdMs);
  if (sb.clusterId) uuidToBytes(sb.clusterId).copy(buf, 88);
  buf.writeUInt32BE(crc32(buf.subarray(0, SB_CRC_AT)), SB_CRC_AT);
  return buf;
}

/** True when `buf` is all zeros (a never-formatted disk, or a never-written record slot). */
export function isBlank(buf: Uint8Array): boolean {
  for (let i = 0; i < buf.length; i++) if (buf[i] !== 0) return false;
  return true;
}

/** Decodes and validates a superblock; throws CorruptMetadataError. */
export function decodeSuperblock(buf: Buffer): Superblock {
  if (buf.length < SUPERBLOCK_SIZE) throw new CorruptMetadataError('superblock: short read');
  if (!buf.subarray(0, 8).equals(SUPERBLOCK_MAGIC)) {
    throw new CorruptMetadataError('not a VastSky disk: no superblock magic (refusing to touch foreign data; zero its first 4 KiB to format it)');
  }
  const stored = buf.readUInt32BE(SB_CRC_AT);
  if (crc32(buf.subarray(0, SB_CRC_AT)) !== stored) throw new CorruptMetadataError('superblock: checksum mismatch');
  const formatVersion = buf.readUInt32BE(8);
  if (formatVersion < OLDEST_UPGRADABLE_FORMAT_VERSION || formatVersion > FORMAT_VERSION) {
    throw new CorruptMetadataError(
      `superblock: unsupported format version ${formatVersion} (this node reads ${FORMAT_VERSION} and upgrades ${OLDEST_UPGRADABLE_FORMAT_VERSION} in place)`,
      { formatVersion });
  }
  const sb: Superblock = {
    diskId: bytesToUuid(buf.subarray(16, 32)),
    formatVersion,
    chunkSize: readU64(buf, 32),
    chunkCount: buf.readUInt32BE(40),
    regionBits: buf.readUInt32BE(44),
    recordSize: buf.readUInt32BE(48),
    tableOffset: readU64(buf, 56),
    dataOffset: readU64(buf, 64),
    diskSize: readU64(buf, 72),
    createdMs: readU64(buf, 80),
    clusterId: isBlank(buf.subarray(88, 104)) ? '' : bytesToUuid(buf.subarray(88, 104)),
  };
  // Geometry must be self-consistent, or we would read and write the wrong places.
  if (sb.regionBits === 0 || sb.regionBits % 8 !== 0) throw new CorruptMetadataError('superblock: invalid region bitmap size', { ...sb });
  const layout = computeLayout(sb.diskSize, sb.chunkSize, sb.regionBits, formatVersion);
  if (sb.recordSize !== layout.recordSize
      || sb.tableOffset !== layout.tableOffset || sb.chunkCount !== layout.chunkCount
      || sb.dataOffset !== alignUp(sb.tableOffset + sb.chunkCount * 2 * sb.recordSize, DATA_ALIGN)) {
    throw new CorruptMetadataError('superblock: inconsistent geometry', { ...sb });
  }
  if (formatVersion < FORMAT_VERSION && recordSizeFor(sb.regionBits) !== sb.recordSize) {
    throw new CorruptMetadataError(
      `superblock: format version ${formatVersion} disk whose ${sb.recordSize}-byte record slots cannot hold version-${FORMAT_VERSION} records `
      + `(${recordSizeFor(sb.regionBits)} bytes for ${sb.regionBits} regions), so it cannot be upgraded in place: `
      + 'copy its chunks off with a node of the previous release (vsky disk remove), then zero its first 4 KiB to reformat it',
      { formatVersion, regionBits: sb.regionBits, recordSize: sb.recordSize });
  }
  return sb;
}

export function emptyRecord(regionBits: number): ChunkRecordData {
  return {
    state: ChunkState.FREE, volumeId: 0, segment: 0, slot: 0, segmentCount: 0, replicas: 0,
    volumeSize: 0, volumeName: '', generation: 0, epoch: 0, staleSlots: 0, mapVersion: 0,
    legality: Legality.LEGAL, jobId: '', jobKind: '', jobOutcome: '', lvolid: 0, thin: false, bitmap: new Uint8Array(regionBits / 8),
    dirty: new Uint8Array(regionBits / 8),
  };
}

/** Encodes a record slot. `diskId` ties the record to its disk; `chunkIndex` to its place. */
export function encodeRecord(rec: ChunkRecordData, seq: number, chunkIndex: number, diskId: Buffer, recordSize: number): Buffer {
  const buf = Buffer.alloc(recordSize);
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
  buf[39] = rec.thin ? 1 : 0;
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
      thin: (buf[39]! & 1) === 1,
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

export function uuidToBytes(uuid: string): Buffer {
  const hex = uuid.replace(/-/g, '');
  if (!/^[0-9a-fA-F]{32}$/.test(hex)) throw new CorruptMetadataError(`invalid UUID "${uuid}"`);
  return Buffer.from(hex, 'hex');
}

export function bytesToUuid(bytes: Uint8Array): string {
  const h = Buffer.from(bytes).toString('hex');
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20, 32)}`;
}

function alignUp(n: number, a: number): number {
  return Math.ceil(n / a) * a;
}

function writeU64(buf: Buffer, at: number, v: number): void {
  buf.writeUInt32BE(Math.floor(v / TWO_32), at);
  buf.writeUInt32BE(v % TWO_32, at + 4);
}

function readU64(buf: Buffer, at: number): number {
  const v = buf.readUInt32BE(at) * TWO_32 + buf.readUInt32BE(at + 4);
  if (!Number.isSafeInteger(v)) throw new CorruptMetadataError('u64 field beyond 2^53', { at });
  return v;
}

/** A u64 generation or epoch: above 2^53-1 the record is corrupt (never truncated). */
function readCounter(buf: Buffer, at: number, what: string, chunkIndex: number): number {
  const hi = buf.readUInt32BE(at);
  if (hi > 0x1f_ffff) throw new CorruptMetadataError(`chunk record: ${what} beyond 2^53-1`, { chunkIndex, hi });
  return hi * TWO_32 + buf.readUInt32BE(at + 4);
}
