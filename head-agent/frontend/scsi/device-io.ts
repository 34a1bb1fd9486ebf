// Block-addressed I/O on the BlockDevice for the command handlers: ranges are
// split into device calls of at most Limits.maxDeviceCall bytes, the abort
// signal is checked before each call (a call already issued is awaited, never
// abandoned: its buffer and range lock stay owned until it settles), and
// device rejections become sense data (error-map.ts), counted as errors in
// the volume's I/O counters (the command handlers count what succeeds).

import type { BlockDevice } from '../../engine/block-device.js';
import type { CommandSignal } from './types.js';
import { ioBuffers } from '../io-buffers.js';
import { senseForDeviceError, type IoDirection } from './error-map.js';
import { SenseError } from './sense.js';
import { Limits, type UnitContext } from './unit-context.js';

/** The command was aborted (ABORT TASK, LUN RESET...): answer TASK ABORTED. */
export class AbortedError extends Error {
  constructor() {
    super('task aborted');
    this.name = 'AbortedError';
  }
}

export function throwIfAborted(signal: CommandSignal): void {
  if (signal.aborted) throw new AbortedError();
}

/** One device call; a rejection becomes sense data (and counts as an error). No async frame of its own. */
function deviceCall<T>(dev: BlockDevice, dir: IoDirection, lba: number | undefined, call: () => Promise<T>): Promise<T> {
  const fail = (err: unknown): never => {
    dev.stats?.failed(err);
    throw new SenseError(senseForDeviceError(err, dir, lba));
  };
  try {
    return call().catch(fail);
  } catch (err) {
    return Promise.reject(err).catch(fail);
  }
}

/** Reads `blocks` blocks at `lba` into `dest` (which must hold them), piece by piece. */
export async function readInto(ctx: UnitContext, signal: CommandSignal, lba: number, dest: Buffer): Promise<Buffer> {
  const dev = ctx.device;
  const base = lba * ctx.blockSize;
  for (let pos = 0; pos < dest.length;) {
    throwIfAborted(signal);
    const n = Math.min(dest.length - pos, Limits.maxDeviceCall);
    const piece = dest.subarray(pos, pos + n);
    const at = lba + pos / ctx.blockSize;
    if (dev.readInto !== undefined) {
      await deviceCall(dev, 'read', at, () => dev.readInto!(base + pos, piece));
    } else {
      const got = await deviceCall(dev, 'read', at, () => dev.read(base + pos, n));
      got.copy(piece);
    }
    pos += n;
  }
  return dest;
}

export async function readBlocks(ctx: UnitContext, signal: CommandSignal, lba: number, blocks: number): Promise<Buffer> {
  const len = blocks * ctx.blockSize;
  if (len <= Limits.maxDeviceCall && ctx.device.readInto === undefined) {
    throwIfAborted(signal);
    return deviceCall(ctx.device, 'read', lba, () => ctx.device.read(lba * ctx.blockSize, len));
  }
  // Pooled: the transport gives it back to ioBuffers once the Data-In is written.
  return readInto(ctx, signal, lba, ioBuffers.acquire(len));
}

export function writeBlocks(ctx: UnitContext, signal: CommandSignal, lba: number, data: Buffer, fua: boolean): Promise<void> {
  if (data.length === 0) return Promise.resolve();
  if (data.length <= Limits.maxDeviceCall) {
    // One device call (every common write): no loop, no async frame.
    if (signal.aborted) return Promise.reject(new AbortedError());
    return deviceCall(ctx.device, 'write', lba, () => ctx.device.write(lba * ctx.blockSize, data, fua));
  }
  return writePieces(ctx, signal, lba, data, fua);
}

async function writePieces(ctx: UnitContext, signal: CommandSignal, lba: number, data: Buffer, fua: boolean): Promise<void> {
  const base = lba * ctx.blockSize;
  for (let pos = 0; pos < data.length;) {
    throwIfAborted(signal);
    const n = Math.min(data.length - pos, Limits.maxDeviceCall);
    const at = lba + pos / ctx.blockSize;
    await deviceCall(ctx.device, 'write', at, () => ctx.device.write(base + pos, data.subarray(pos, pos + n), fua));
    pos += n;
  }
}

/** Runs `op(offset, length)` over the range in device-sized pieces (write-zeroes, discard). */
export async function forEachPiece(
  ctx: UnitContext, signal: CommandSignal, lba: number, blocks: number,
  op: (offset: number, length: number) => Promise<void>,
): Promise<void> {
  const base = lba * ctx.blockSize;
  const total = blocks * ctx.blockSize;
  for (let pos = 0; pos < total;) {
    throwIfAborted(signal);
    const n = Math.min(total - pos, Limits.maxDeviceCall);
    await deviceCall(ctx.device, 'write', lba + pos / ctx.blockSize, () => op(base + pos, n));
    pos += n;
  }
}

/**
 * Reads the range back and compares it with `expected` (when given): the
 * byte offset of the first difference, or -1. Without `expected` this is a
 * medium check: every block must read. Uses one bounded scratch buffer.
 */
export async function verifyBlocks(
  ctx: UnitContext, signal: CommandSignal, lba: number, blocks: number, expected?: Buffer,
): Promise<number> {
  const total = blocks * ctx.blockSize;
  const scratch = Buffer.allocUnsafe(Math.min(total, 4 * 1024 * 1024));
  for (let pos = 0; pos < total;) {
    const n = Math.min(total - pos, scratch.length);
    const got = await readInto(ctx, signal, lba + pos / ctx.blockSize, scratch.subarray(0, n));
    if (expected !== undefined) {
      const want = expected.subarray(pos, pos + n);
      if (!got.equals(want)) return pos + firstDifference(got, want);
    }
    pos += n;
  }
  return -1;
}

export function firstDifference(a: Buffer, b: Buffer): number {
  const n = Math.min(a.length, b.length);
  for (let i = 0; i < n; i++) if (a[i] !== b[i]) return i;
  return n;
}

export async function flushDevice(ctx: UnitContext): Promise<void> {
  await deviceCall(ctx.device, 'write', undefined, () => ctx.device.flush());
}
