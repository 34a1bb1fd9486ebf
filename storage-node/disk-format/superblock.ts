import { crc32 } from 'node:zlib';
import { CorruptMetadataError } from '../../shared/errors.js';
import { alignUp, bytesToUuid, isBlank, readU64, uuidToBytes, writeU64 } from './bytes.js';
import { computeLayout, DATA_ALIGN, FORMAT_VERSION, OLDEST_UPGRADABLE_FORMAT_VERSION, recordSizeFor, SUPERBLOCK_SIZE } from './layout.js';

// The superblock codec: the first 4 KiB of a disk say what it is (its UUID,
// cluster, format version and geometry), under a CRC.

/** "VSKYDISK": tells our disks apart from foreign data. */
export const SUPERBLOCK_MAGIC = Buffer.from('VSKYDISK', 'ascii');
/** Bytes of the superblock covered by its CRC (the CRC sits right after them). */
const SB_CRC_AT = 124;

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
