import { randomUUID } from 'node:crypto';
import fs from 'node:fs';
import { InvalidArgumentError } from '../../shared/errors.js';
import { defaultRegionSize, regionSizeProblem } from '../../shared/region-bitmap.js';
import { moduleLogger } from '../../shared/logger.js';
import { FORMAT_VERSION, computeLayout } from '../disk-format/layout.js';
import { encodeSuperblock, type Superblock } from '../disk-format/superblock.js';
import { p, writeFully } from './file-io.js';

// Formatting a blank disk (storage-node/disk.ts opens it): the layout for its
// size, a zeroed chunk table, then the superblock, each made durable in turn.

/**
 * Formats a blank disk: zero the chunk table, make it durable, then write the
 * superblock. `regionSize`: bytes per written-region bit (default chunk size /
 * 4096, defaultRegionSize; 4 KiB regions are opt-in, --region-size 4K: docs/snapshots.md).
 */
export async function format(fd: number, size: number, chunkSize: number, regionSize = defaultRegionSize(chunkSize)): Promise<Superblock> {
  const problem = regionSizeProblem(chunkSize, regionSize);
  if (problem) throw new InvalidArgumentError(problem, { chunkSize, regionSize });
  const regionBits = chunkSize / regionSize;
  const layout = computeLayout(size, chunkSize, regionBits);
  if (layout.chunkCount === 0) {
    throw new InvalidArgumentError(`disk of ${size} bytes is too small for one chunk of ${chunkSize} bytes`, { size, chunkSize });
  }
  const sb: Superblock = {
    diskId: randomUUID(), formatVersion: FORMAT_VERSION, chunkSize, chunkCount: layout.chunkCount,
    regionBits, recordSize: layout.recordSize, tableOffset: layout.tableOffset,
    dataOffset: layout.dataOffset, diskSize: size, createdMs: Date.now(), clusterId: '',
  };
  // A device may hold old bytes where the table goes: clear them first, so no
  // stale record can ever be taken for ours (records also carry the disk UUID).
  const zeros = Buffer.alloc(Math.min(layout.dataOffset - layout.tableOffset, 1024 * 1024));
  for (let at = layout.tableOffset; at < layout.dataOffset; at += zeros.length) {
    await writeFully(fd, zeros.subarray(0, Math.min(zeros.length, layout.dataOffset - at)), at);
  }
  await p<void>((cb) => fs.fdatasync(fd, cb));
  await writeFully(fd, encodeSuperblock(sb), 0);
  await p<void>((cb) => fs.fdatasync(fd, cb));
  moduleLogger('disk', { disk: sb.diskId }).info({ size, chunkSize, regionSize, chunkCount: sb.chunkCount }, 'formatted disk');
  return sb;
}
