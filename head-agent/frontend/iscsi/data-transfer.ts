// Write data collection for one SCSI command (RFC 7143 4.2.4 and 11.7-11.8)
// and the per-connection byte budget that bounds it.
//
// A write's Data-Out arrives in up to three ways: immediate data inside the
// command PDU (ImmediateData=Yes), unsolicited Data-Out PDUs right after it
// (InitialR2T=No; the command's F bit is clear), together at most
// FirstBurstLength; then solicited Data-Out, each sequence answering one of
// our R2Ts (at most MaxOutstandingR2T at once, each at most MaxBurstLength).
// We negotiate DataPDUInOrder=Yes and DataSequenceInOrder=Yes, so every
// sequence must arrive at increasing offsets with no overlap; anything else
// ends the command with CHECK CONDITION (task-set.ts). Data is copied once, into one buffer per command,
// which is what the SCSI layer receives; a Data-Out payload that spans socket
// chunks is even assembled in place there (placement()), not copied at all.

import { BufferPool, COMMON_IO_SIZES } from '../../../shared/buffer-pool.js';
import { RESERVED_TAG } from './constants.js';

/** Bytes of command data one connection may hold; FIFO waiting beyond it. */
export class DataBudget {
  private used = 0;
  private readonly limit: number;
  private readonly waiters: { bytes: number; grant: () => void }[] = [];

  constructor(limit: number) {
    this.limit = limit;
  }

  get inUse(): number {
    return this.used;
  }

  /**
   * Reserves `bytes` now (returns true) or queues `grant` to run once they
   * fit (returns false). A request larger than the whole budget goes through
   * when nothing else is reserved, so it cannot starve.
   */
  reserve(bytes: number, grant: () => void): boolean {
    if (this.waiters.length === 0 && this.fits(bytes)) {
      this.used += bytes;
      return true;
    }
    this.waiters.push({ bytes, grant });
    return false;
  }

  /** True when `bytes` would be granted at once. */
  hasRoomFor(bytes: number): boolean {
    return this.waiters.length === 0 && this.fits(bytes);
  }

  /** Reserves even beyond the limit (data that is already arriving and bounded elsewhere). */
  force(bytes: number): void {
    this.used += bytes;
  }

  /** Withdraws a queued request (its task was aborted); false when it was already granted. */
  cancel(grant: () => void): boolean {
    const i = this.waiters.findIndex((w) => w.grant === grant);
    if (i < 0) return false;
    this.waiters.splice(i, 1);
    this.wake();
    return true;
  }

  release(bytes: number): void {
    this.used -= bytes;
    this.wake();
  }

  private fits(bytes: number): boolean {
    return this.used + bytes <= this.limit || this.used === 0;
  }

  private wake(): void {
    while (this.waiters.length > 0 && this.fits(this.waiters[0]!.bytes)) {
      const w = this.waiters.shift()!;
      this.used += w.bytes;
      w.grant();
    }
  }
}

/** An R2T to send. */
export interface R2TRequest {
  ttt: number;
  r2tSN: number;
  offset: number;
  length: number;
}

/** One data sequence being received: the unsolicited one, or an R2T's. */
interface Sequence {
  offset: number;
  length: number;
  /** Next expected buffer offset (in order, no overlap). */
  next: number;
  dataSN: number;
}

/**
 * Slack around a command's data in its buffer, so a whole Data-Out payload
 * can be assembled in place: a header digest just before the data (4), the
 * pad and data digest just after it (3 + 4).
 */
export const HEAD_SLACK = 4;
const TAIL_SLACK = 8;

/** Command buffers of the common transfer sizes, recycled (bounded; see shared/buffer-pool.ts). */
const commandBuffers = new BufferPool(COMMON_IO_SIZES.map((n) => HEAD_SLACK + n + TAIL_SLACK));

/** A command buffer for `expected` bytes, with the slack for in-place assembly (pooled for common sizes). */
export function allocateCommandBuffer(expected: number): Buffer {
  return commandBuffers.acquire(HEAD_SLACK + expected + TAIL_SLACK);
}

/**
 * Gives a command buffer back once nothing writes into it (its data was
 * complete) and the unit has settled the command. Others are ignored.
 */
export function releaseCommandBuffer(raw: Buffer): void {
  commandBuffers.release(raw);
}

export interface CollectorLimits {
  maxBurst: number;
  maxOutstandingR2T: number;
}

export class WriteCollector {
  readonly expected: number;
  /** The command's data, once attached; undefined while waiting for budget. */
  private buffer: Buffer | undefined;
  /** `buffer` with the slack around it. */
  private raw: Buffer | undefined;
  /** Unsolicited bytes that arrived before the buffer (copied in on attach). */
  private staging: Buffer | undefined;
  private received = 0;
  private unsolicited: Sequence | undefined;
  private readonly r2ts = new Map<number, Sequence>();
  private nextR2TOffset: number;
  private r2tSN = 0;
  private draining = false;
  private readonly limits: CollectorLimits;

  /**
   * `immediate`: the command PDU's data segment. `unsolicitedLength`: how
   * many bytes in all (immediate included) may come without an R2T; Data-Out
   * without R2T is expected when it exceeds the immediate data and the
   * command's F bit was clear. `attachNow`: the budget is already granted;
   * attach at once, to `raw` when given (the immediate data may already sit
   * in it, assembled in place).
   */
  constructor(
    expected: number, immediate: Buffer | undefined, unsolicitedLength: number, moreUnsolicited: boolean, limits: CollectorLimits,
    attachNow?: { raw: Buffer | undefined },
  ) {
    this.expected = expected;
    this.limits = limits;
    const immediateLength = immediate?.length ?? 0;
    if (moreUnsolicited && unsolicitedLength > immediateLength) {
      this.unsolicited = { offset: 0, length: unsolicitedLength, next: immediateLength, dataSN: 0 };
    }
    this.nextR2TOffset = immediateLength;
    if (attachNow !== undefined) this.attach(attachNow.raw);
    if (immediate !== undefined && immediateLength > 0) this.store(0, immediate);
  }

  get complete(): boolean {
    return this.received === this.expected;
  }

  get attached(): boolean {
    return this.buffer !== undefined;
  }

  /** The data, once complete. */
  get data(): Buffer {
    return this.buffer!;
  }

  /** The buffer `data` lies in (with its slack), once attached. */
  get commandBuffer(): Buffer | undefined {
    return this.raw;
  }

  /** True while unsolicited Data-Out may still arrive. */
  get unsolicitedOpen(): boolean {
    return this.unsolicited !== undefined;
  }

  /** Draining (see drain()) and nothing more is owed: the initiator is done sending. */
  get drained(): boolean {
    return this.draining && this.unsolicited === undefined && this.r2ts.size === 0;
  }

  /** Gives the collector its buffer once budget allows: `raw` from allocateCommandBuffer(), or a new one. */
  attach(raw?: Buffer): void {
    this.raw = raw !== undefined && raw.length === HEAD_SLACK + this.expected + TAIL_SLACK ? raw : allocateCommandBuffer(this.expected);
    const buffer = this.raw.subarray(HEAD_SLACK, HEAD_SLACK + this.expected);
    this.buffer = buffer;
    if (this.staging !== undefined) {
      // Staged data is the unsolicited prefix: [0, received).
      this.staging.copy(buffer, 0, 0, this.received);
      this.staging = undefined;
    }
  }

  /**
   * One Data-Out PDU. Returns undefined when accepted, else why it breaks
   * the sequence rules (the caller ends the command with CHECK CONDITION).
   */
  dataOut(ttt: number, dataSN: number, offset: number, data: Buffer | undefined, final: boolean): string | undefined {
    if (this.draining) {
      this.swallow(ttt, final);
      return undefined;
    }
    const length = data?.length ?? 0;
    let seq: Sequence | undefined;
    if (ttt === RESERVED_TAG) {
      seq = this.unsolicited;
      if (seq === undefined) return 'unsolicited Data-Out where none is allowed';
    } else {
      seq = this.r2ts.get(ttt);
      if (seq === undefined) return `Data-Out with unknown Target Transfer Tag 0x${ttt.toString(16)}`;
    }
    if (dataSN !== seq.dataSN) return `DataSN ${dataSN}, expected ${seq.dataSN}`;
    if (offset !== seq.next) return `Data-Out at offset ${offset}, expected ${seq.next} (DataPDUInOrder=Yes)`;
    const end = seq.offset + seq.length;
    if (offset + length > end) return `Data-Out of ${length} bytes at ${offset} runs past the sequence end ${end}`;
    if (length > 0) this.store(offset, data!);
    seq.next += length;
    seq.dataSN++;
    if (seq.next === end && !final) return 'last Data-Out of a sequence without the F bit';
    if (final) {
      if (ttt === RESERVED_TAG) {
        // The unsolicited sequence may end early; R2Ts then ask for the rest.
        this.unsolicited = undefined;
        this.nextR2TOffset = seq.next;
      } else {
        if (seq.next !== end) return 'F bit before the end of the R2T sequence';
        this.r2ts.delete(ttt);
      }
    }
    return undefined;
  }

  /**
   * The R2Ts to send now (none until the unsolicited sequence is over and
   * the buffer attached). `allocateTtt` names each one.
   */
  nextR2Ts(allocateTtt: () => number): R2TRequest[] {
    const out: R2TRequest[] = [];
    if (this.unsolicited !== undefined || this.buffer === undefined) return out;
    while (this.nextR2TOffset < this.expected && this.r2ts.size < this.limits.maxOutstandingR2T) {
      const length = Math.min(this.limits.maxBurst, this.expected - this.nextR2TOffset);
      const ttt = allocateTtt();
      const seq: Sequence = { offset: this.nextR2TOffset, length, next: this.nextR2TOffset, dataSN: 0 };
      this.r2ts.set(ttt, seq);
      out.push({ ttt, r2tSN: this.r2tSN++, offset: seq.offset, length });
      this.nextR2TOffset += length;
    }
    return out;
  }

  /**
   * The command will not run with this data (aborted, or a data sequence
   * error): no more R2Ts; Data-Out already owed (the unsolicited burst, our
   * outstanding R2Ts) is taken and dropped until each sequence's F bit.
   */
  drain(): void {
    this.draining = true;
    this.nextR2TOffset = this.expected;
    this.buffer = undefined;
    this.raw = undefined;
    this.staging = undefined;
  }

  private swallow(ttt: number, final: boolean): void {
    if (!final) return;
    if (ttt === RESERVED_TAG) this.unsolicited = undefined;
    else this.r2ts.delete(ttt);
  }

  /**
   * Where a Data-Out payload of `length` data bytes at `offset` may be
   * assembled in place: a view of the buffer starting `headerDigest` bytes
   * before the data, or undefined when the PDU would not be accepted as is,
   * or its pad and digest would land on data already received (another
   * sequence's). The caller restores the `headerDigest` bytes it overwrote.
   */
  placement(ttt: number, dataSN: number, offset: number, length: number, trailer: number, headerDigest: number): Buffer | undefined {
    if (this.draining || this.raw === undefined) return undefined;
    const seq = ttt === RESERVED_TAG ? this.unsolicited : this.r2ts.get(ttt);
    if (seq === undefined || seq.dataSN !== dataSN || seq.next !== offset) return undefined;
    const end = offset + length;
    const seqEnd = seq.offset + seq.length;
    if (end > seqEnd) return undefined;
    if (trailer > 0 && end === seqEnd && end < this.expected) {
      for (const other of this.r2ts.values()) if (other.offset === end && other.next > other.offset) return undefined;
    }
    return this.raw.subarray(HEAD_SLACK + offset - headerDigest);
  }

  private store(offset: number, data: Buffer): void {
    if (this.buffer !== undefined) {
      // Assembled in place already (placement()): nothing to copy.
      if (data.buffer === this.buffer.buffer && data.byteOffset === this.buffer.byteOffset + offset) {
        this.received += data.length;
        return;
      }
      data.copy(this.buffer, offset);
    } else {
      // Only unsolicited data can arrive before attach, and it starts at 0
      // and arrives in order, so staging holds [0, received).
      this.staging ??= Buffer.allocUnsafe(Math.min(this.expected, Math.max(offset + data.length, this.unsolicitedLimit())));
      data.copy(this.staging, offset);
    }
    this.received += data.length;
  }

  private unsolicitedLimit(): number {
    return this.unsolicited?.length ?? this.received;
  }
}
