import { CorruptMetadataError } from '../../shared/errors.js';
import { alignUp } from './bytes.js';

// Where things sit on a disk: the superblock, the chunk table (two record
// slots per chunk) and the chunk data, and the format versions a node reads.
// storage-node/disk-format.ts describes the format in full.

export const SUPERBLOCK_SIZE = 4096;
export const FORMAT_VERSION = 3;
/** Oldest format version a node still opens: upgraded in place to FORMAT_VERSION (storage-node/disk.ts). */
export const OLDEST_UPGRADABLE_FORMAT_VERSION = 2;
/** Fixed part of a record slot; the written-region bitmap then the dirty bitmap follow it. */
export const RECORD_FIXED = 224;
/** Fixed part of a version-2 record slot. */
export const RECORD_FIXED_V2 = 144;
/** Record slots are whole sectors so one slot never shares a sector with another. */
export const SECTOR = 512;
/** Chunk data starts on this boundary (keeps O_DIRECT and device alignment simple). */
export const DATA_ALIGN = 1024 * 1024;

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

