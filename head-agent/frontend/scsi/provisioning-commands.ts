// Logical block provisioning (SBC-3 4.7): WRITE SAME (10)/(16), UNMAP and
// GET LBA STATUS. Unmapped blocks read as zeros (LBPRZ=1): BlockDevice.discard
// guarantees it, so WRITE SAME of a zero block with UNMAP=1 is a discard and
// without it a write-zeroes; any other block is replicated into a bounded
// pattern buffer and written piece by piece.

import type { CommandSignal, ScsiCommand, ScsiResult } from './types.js';
import { ScsiStatus } from './types.js';
import { Op, decodeGetLbaStatus, decodeUnmap, decodeWriteSame } from './cdb.js';
import { forEachPiece, throwIfAborted, writeBlocks } from './device-io.js';
import { checkRange, checkWritable, lockRange } from './rw-commands.js';
import { invalidFieldInCdb, invalidFieldInParameters, lbaOutOfRange, parameterListLengthError } from './sense.js';
import { Limits, type UnitContext } from './unit-context.js';
import { truncate } from './results.js';

function isZero(b: Buffer): boolean {
  for (let i = 0; i < b.length; i++) if (b[i] !== 0) return false;
  return true;
}

export async function writeSame(ctx: UnitContext, cmd: ScsiCommand): Promise<ScsiResult> {
  const cdb = cmd.cdb;
  const req = decodeWriteSame(cdb);
  const lenByte = cdb[0] === Op.WRITE_SAME_16 ? 10 : 7;
  if (req.protect !== 0) throw invalidFieldInCdb(1, 7);
  // ANCHOR needs UNMAP, and anchored blocks are not supported (ANC_SUP=0).
  if (req.anchor) throw invalidFieldInCdb(1, 4);
  checkRange(ctx, req.lba, req.blocks);
  // WSNZ=1 (VPD B0h): 0 would mean "to the end of the medium"; we refuse it.
  if (req.blocks === 0) throw invalidFieldInCdb(lenByte);
  if (req.blocks * ctx.blockSize > Limits.maxWriteSameBytes) throw invalidFieldInCdb(lenByte);
  const got = cmd.dataOut?.length ?? 0;
  // The Data-Out is exactly one block (none with NDOB); the block cannot be
  // told from a different-sized buffer.
  if (got !== (req.ndob ? 0 : ctx.blockSize)) throw invalidFieldInCdb(lenByte);
  checkWritable(ctx);
  const block = req.ndob ? Buffer.alloc(ctx.blockSize) : cmd.dataOut!;
  const fua = !ctx.mode.wce;
  const release = await lockRange(ctx, cmd.signal, req.lba, req.blocks);
  try {
    if (isZero(block)) {
      const dev = ctx.device;
      await forEachPiece(ctx, cmd.signal, req.lba, req.blocks, req.unmap
        ? (off, len) => dev.discard(off, len)
        : (off, len) => dev.writeZeroes(off, len, fua));
      if (req.unmap) dev.stats?.discard(req.blocks * ctx.blockSize);
      else dev.stats?.zero(req.blocks * ctx.blockSize);
    } else {
      await writePattern(ctx, cmd.signal, req.lba, req.blocks, block, fua);
    }
  } finally {
    release();
  }
  return { status: ScsiStatus.GOOD, dataOutLength: req.ndob ? 0 : ctx.blockSize };
}

/** Writes `block` into every block of the range through one bounded, reused pattern buffer. */
async function writePattern(
  ctx: UnitContext, signal: CommandSignal, lba: number, blocks: number, block: Buffer, fua: boolean,
): Promise<void> {
  const perChunk = Math.max(1, Math.min(blocks, Math.floor(Limits.writeSameChunkBytes / ctx.blockSize)));
  const pattern = Buffer.allocUnsafe(perChunk * ctx.blockSize);
  for (let i = 0; i < perChunk; i++) block.copy(pattern, i * ctx.blockSize);
  for (let done = 0; done < blocks;) {
    throwIfAborted(signal);
    const n = Math.min(perChunk, blocks - done);
    // Each write settles before the next starts, so the one buffer is never shared by two calls.
    await writeBlocks(ctx, signal, lba + done, pattern.subarray(0, n * ctx.blockSize), fua);
    done += n;
  }
}

interface Extent { lba: number; blocks: number }

/**
 * UNMAP (SBC-3 5.28): the parameter list is an 8-byte header and 16-byte
 * block descriptors. Everything is validated before anything is unmapped.
 */
export async function unmap(ctx: UnitContext, cmd: ScsiCommand): Promise<ScsiResult> {
  const { anchor, paramLength } = decodeUnmap(cmd.cdb);
  if (anchor) throw invalidFieldInCdb(1, 0); // ANC_SUP=0
  const result: ScsiResult = { status: ScsiStatus.GOOD, dataOutLength: paramLength };
  if (paramLength === 0) return result; // no parameter data: nothing to do, not an error
  const list = (cmd.dataOut ?? Buffer.alloc(0)).subarray(0, paramLength);
  if (list.length < 8) throw parameterListLengthError();
  // UNMAP BLOCK DESCRIPTOR DATA LENGTH; a trailing partial descriptor is ignored.
  const bdBytes = Math.min(list.readUInt16BE(2), list.length - 8);
  const count = Math.floor(bdBytes / 16);
  if (count > Limits.maxUnmapDescriptors) throw invalidFieldInParameters(2);
  const extents: Extent[] = [];
  let total = 0;
  for (let i = 0; i < count; i++) {
    const at = 8 + 16 * i;
    const lba = list.readUInt32BE(at) * 0x1_0000_0000 + list.readUInt32BE(at + 4);
    const blocks = list.readUInt32BE(at + 8);
    if (lba + blocks > ctx.numBlocks) throw lbaOutOfRange(lba <= 0xffffffff ? lba : undefined);
    total += blocks;
    if (total * ctx.blockSize > Limits.maxUnmapBytes) throw invalidFieldInParameters(at + 8);
    if (blocks > 0) extents.push({ lba, blocks });
  }
  checkWritable(ctx);
  for (const e of extents) {
    const release = await lockRange(ctx, cmd.signal, e.lba, e.blocks);
    try {
      await forEachPiece(ctx, cmd.signal, e.lba, e.blocks, (off, len) => ctx.device.discard(off, len));
    } finally {
      release();
    }
  }
  if (extents.length > 0) ctx.device.stats?.discard(total * ctx.blockSize);
  return result;
}

/**
 * GET LBA STATUS (SBC-3 5.6): one descriptor from the requested LBA. A thin
 * volume's unallocated segments (BlockDevice.extentAt: this head holds the
 * lease, and only the holder allocates) are DEALLOCATED up to the next
 * allocated one. Otherwise: to the end of the medium (at most 2^32-1
 * blocks), reported MAPPED. The unit
 * cannot know which blocks the storage nodes hold unmapped (other exports
 * and earlier heads write the same volume), and reporting a block
 * deallocated when it holds data would make copy tools skip it; reporting a
 * deallocated block mapped is harmless with LBPRZ=1 (it reads as zeros).
 */
export function getLbaStatus(ctx: UnitContext, cmd: ScsiCommand): ScsiResult {
  const { lba, allocLength } = decodeGetLbaStatus(cmd.cdb);
  if (lba >= ctx.numBlocks) throw lbaOutOfRange(lba <= 0xffffffff ? lba : undefined);
  const b = Buffer.alloc(24);
  b.writeUInt32BE(20, 0); // PARAMETER DATA LENGTH: 4 reserved + one 16-byte descriptor
  b.writeUInt32BE(Math.floor(lba / 0x1_0000_0000), 8);
  b.writeUInt32BE(lba >>> 0, 12);
  const extent = ctx.device.extentAt?.(lba * ctx.blockSize);
  const deallocated = extent !== undefined && !extent.allocated;
  const blocks = deallocated ? Math.max(1, Math.floor(extent.length / ctx.blockSize)) : ctx.numBlocks - lba;
  b.writeUInt32BE(Math.min(blocks, ctx.numBlocks - lba, 0xffffffff), 16);
  b[20] = deallocated ? 0x01 : 0x00; // PROVISIONING STATUS: deallocated (reads zeros, LBPRZ) or mapped
  return truncate(b, allocLength);
}
