// Data commands (SBC-3 5.x): READ, WRITE, VERIFY, WRITE AND VERIFY (6/10/
// 12/16), COMPARE AND WRITE and SYNCHRONIZE CACHE. Every command that changes
// blocks holds the unit's range lock over them while its device calls run.
//
// Data-Out shorter than the CDB's transfer length (the iSCSI Expected Data
// Transfer Length was smaller) writes only the whole blocks received; the
// transport reports the residual from ScsiResult.dataOutLength.

import type { CommandSignal, ScsiCommand, ScsiResult } from './types.js';
import { ScsiStatus } from './types.js';
import { Op, cdbLengthOf, decodeCompareAndWrite, decodeRw, decodeRw6, decodeSyncCache, decodeVerify, type BlockRequest } from './cdb.js';
import {
  AbortedError, flushDevice, readBlocks, readInto, verifyBlocks, writeBlocks, firstDifference,
} from './device-io.js';
import { invalidFieldInCdb, lbaOutOfRange, miscompare, writeProtected } from './sense.js';
import { Limits, type UnitContext } from './unit-context.js';
import type { Release } from './range-lock.js';
import { GOOD } from './results.js';
import { ioBuffers } from '../io-buffers.js';

/** The TRANSFER LENGTH field's byte in a 10/12/16-byte CDB (for field pointers). */
function lengthByte(cdb: Buffer): number {
  const len = cdbLengthOf(cdb[0]!);
  return len === 16 ? 10 : len === 12 ? 6 : len === 10 ? 7 : 4;
}

/** LBA OUT OF RANGE unless [lba, lba+blocks) lies on the medium; a 0-block range must start on it (SBC-3 4.5). */
export function checkRange(ctx: UnitContext, lba: number, blocks: number): void {
  if (lba > ctx.numBlocks - Math.max(blocks, 1)) throw lbaOutOfRange(lba <= 0xffffffff ? lba : undefined);
}

function checkTransfer(ctx: UnitContext, cdb: Buffer, blocks: number): void {
  if (blocks * ctx.blockSize > Limits.maxTransferBytes) throw invalidFieldInCdb(lengthByte(cdb));
}

/** The unit refuses writes while software write protect (control page SWP) is on, or the medium is read-only. */
export function checkWritable(ctx: UnitContext): void {
  if (ctx.mode.swp || ctx.mode.readOnly) throw writeProtected();
}

/** Takes the range lock, or AbortedError if the task is aborted while waiting. */
export async function lockRange(ctx: UnitContext, signal: CommandSignal, lba: number, blocks: number): Promise<Release> {
  const release = await ctx.lock.acquire(lba, blocks, signal);
  if (release === undefined) throw new AbortedError();
  return release;
}

function decodeBlockCdb(cdb: Buffer): BlockRequest {
  return cdb[0] === Op.READ_6 || cdb[0] === Op.WRITE_6 ? decodeRw6(cdb) : decodeRw(cdb);
}

export async function read(ctx: UnitContext, cmd: ScsiCommand): Promise<ScsiResult> {
  const req = decodeBlockCdb(cmd.cdb);
  if (req.protect !== 0) throw invalidFieldInCdb(1, 7); // no protection information (INQUIRY PROTECT=0)
  checkRange(ctx, req.lba, req.blocks);
  checkTransfer(ctx, cmd.cdb, req.blocks);
  if (req.blocks === 0) return GOOD;
  const started = performance.now();
  const total = req.blocks * ctx.blockSize;
  if (cmd.expectedLength >= total) {
    const dataIn = await readBlocks(ctx, cmd.signal, req.lba, req.blocks);
    ctx.device.stats?.read(total, (performance.now() - started) / 1000);
    return { status: ScsiStatus.GOOD, dataIn };
  }
  // The initiator takes only expectedLength bytes: read the blocks it will
  // get. The Data-In keeps the command's full length (zeros past what was
  // read) so the transport reports the overflow residual.
  const dataIn = Buffer.alloc(total);
  const wanted = Math.ceil(cmd.expectedLength / ctx.blockSize);
  if (wanted > 0) await readInto(ctx, cmd.signal, req.lba, dataIn.subarray(0, wanted * ctx.blockSize));
  ctx.device.stats?.read(wanted * ctx.blockSize, (performance.now() - started) / 1000);
  return { status: ScsiStatus.GOOD, dataIn };
}

/** The whole blocks of Data-Out received, at most `blocks` of them. */
function receivedBlocks(ctx: UnitContext, cmd: ScsiCommand, blocks: number): Buffer {
  const data = cmd.dataOut ?? Buffer.alloc(0);
  const n = Math.min(blocks, Math.floor(data.length / ctx.blockSize));
  return data.subarray(0, n * ctx.blockSize);
}

export async function write(ctx: UnitContext, cmd: ScsiCommand): Promise<ScsiResult> {
  const req = decodeBlockCdb(cmd.cdb);
  if (req.protect !== 0) throw invalidFieldInCdb(1, 7);
  checkRange(ctx, req.lba, req.blocks);
  checkTransfer(ctx, cmd.cdb, req.blocks);
  checkWritable(ctx);
  const dataOutLength = req.blocks * ctx.blockSize;
  const data = receivedBlocks(ctx, cmd, req.blocks);
  if (data.length === 0) return { status: ScsiStatus.GOOD, dataOutLength };
  const started = performance.now();
  const blocks = data.length / ctx.blockSize;
  const release = ctx.lock.tryAcquire(req.lba, blocks) ?? await lockRange(ctx, cmd.signal, req.lba, blocks);
  try {
    await writeBlocks(ctx, cmd.signal, req.lba, data, req.fua || !ctx.mode.wce);
  } finally {
    release();
  }
  ctx.device.stats?.write(data.length, (performance.now() - started) / 1000);
  return { status: ScsiStatus.GOOD, dataOutLength };
}

/**
 * VERIFY (SBC-3 5.33-5.35): BYTCHK=0 checks the medium (every block must
 * read); BYTCHK=1 compares it with the Data-Out, MISCOMPARE with the offset
 * of the first differing byte in INFORMATION.
 */
export async function verify(ctx: UnitContext, cmd: ScsiCommand): Promise<ScsiResult> {
  const req = decodeVerify(cmd.cdb);
  if (req.protect !== 0) throw invalidFieldInCdb(1, 7);
  checkRange(ctx, req.lba, req.blocks);
  if (req.bytchk === 0) {
    if (req.blocks > 0) await verifyBlocks(ctx, cmd.signal, req.lba, req.blocks);
    return GOOD;
  }
  checkTransfer(ctx, cmd.cdb, req.blocks);
  const dataOutLength = req.blocks * ctx.blockSize;
  const data = receivedBlocks(ctx, cmd, req.blocks);
  if (data.length > 0) {
    const at = await verifyBlocks(ctx, cmd.signal, req.lba, data.length / ctx.blockSize, data);
    if (at >= 0) throw miscompare(at);
  }
  return { status: ScsiStatus.GOOD, dataOutLength };
}

/** WRITE AND VERIFY (SBC-3 5.39-5.41): a durable write, then the read-back check (a compare with BYTCHK=1). */
export async function writeAndVerify(ctx: UnitContext, cmd: ScsiCommand): Promise<ScsiResult> {
  const req = decodeVerify(cmd.cdb);
  if (req.protect !== 0) throw invalidFieldInCdb(1, 7);
  checkRange(ctx, req.lba, req.blocks);
  checkTransfer(ctx, cmd.cdb, req.blocks);
  checkWritable(ctx);
  const dataOutLength = req.blocks * ctx.blockSize;
  const data = receivedBlocks(ctx, cmd, req.blocks);
  if (data.length === 0) return { status: ScsiStatus.GOOD, dataOutLength };
  const blocks = data.length / ctx.blockSize;
  const release = await lockRange(ctx, cmd.signal, req.lba, blocks);
  try {
    await writeBlocks(ctx, cmd.signal, req.lba, data, true);
    const at = await verifyBlocks(ctx, cmd.signal, req.lba, blocks, req.bytchk === 1 ? data : undefined);
    if (at >= 0) throw miscompare(at);
  } finally {
    release();
  }
  return { status: ScsiStatus.GOOD, dataOutLength };
}

/**
 * COMPARE AND WRITE (SBC-3 5.2): the Data-Out holds N blocks to compare
 * then N blocks to write. Under the range lock, so no other write to these
 * blocks lands between the read and the write. On a mismatch nothing is
 * written and INFORMATION holds the offset of the first differing byte.
 */
export async function compareAndWrite(ctx: UnitContext, cmd: ScsiCommand): Promise<ScsiResult> {
  const req = decodeCompareAndWrite(cmd.cdb);
  if (req.protect !== 0) throw invalidFieldInCdb(1, 7);
  if (req.blocks > Limits.maxCompareAndWriteBlocks) throw invalidFieldInCdb(13);
  checkRange(ctx, req.lba, req.blocks);
  const half = req.blocks * ctx.blockSize;
  // The Data-Out must be exactly both halves: anything else cannot be split
  // into "compare" and "write" data (SBC-3 5.2: NUMBER OF LOGICAL BLOCKS).
  if ((cmd.dataOut?.length ?? 0) !== 2 * half) throw invalidFieldInCdb(13);
  checkWritable(ctx);
  if (req.blocks === 0) return { status: ScsiStatus.GOOD, dataOutLength: 0 };
  const data = cmd.dataOut!;
  const release = await lockRange(ctx, cmd.signal, req.lba, req.blocks);
  try {
    const current = await readBlocks(ctx, cmd.signal, req.lba, req.blocks);
    const expected = data.subarray(0, half);
    const differs = current.equals(expected) ? -1 : firstDifference(current, expected);
    ioBuffers.release(current);
    if (differs >= 0) throw miscompare(differs);
    await writeBlocks(ctx, cmd.signal, req.lba, data.subarray(half), req.fua || !ctx.mode.wce);
  } finally {
    release();
  }
  return { status: ScsiStatus.GOOD, dataOutLength: 2 * half };
}

/** SYNCHRONIZE CACHE (10)/(16): the range is checked; the whole device is flushed (IMMED or not). */
export async function synchronizeCache(ctx: UnitContext, cmd: ScsiCommand): Promise<ScsiResult> {
  const req = decodeSyncCache(cmd.cdb);
  // NUMBER OF LOGICAL BLOCKS 0 means "to the last LBA".
  checkRange(ctx, req.lba, req.blocks);
  const started = performance.now();
  await flushDevice(ctx);
  ctx.device.stats?.flush((performance.now() - started) / 1000);
  return GOOD;
}
