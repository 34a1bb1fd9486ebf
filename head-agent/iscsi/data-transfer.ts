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
// is a protocol error. Data is copied once, into one buffer per command,
// which is what the SCSI layer receives.

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

export interface CollectorLimits {
  maxBurst: number;
  maxOutstandingR2T: number;
}

export class WriteCollector {
  readonly expected: number;
  /** The command's data, once attached; undefined while waiting for budget. */
  private buffer: Buffer | undefined;
  /** Unsolicited bytes that arrived before the buffer (copied in on attach). */
  private staging: Buffer | undefined;
  private received = 0;
  private unsolicited: Sequence | undefined;
  private readonly r2ts = new Map<number, Sequence>();
  private nextR2TOffset: number;
  private r2tSN = 0;
  private readonly limits: CollectorLimits;

  /**
   * `immediate`: the command PDU's data segment. `unsolicitedLength`: how
   * many bytes in all (immediate included) may come without an R2T; Data-Out
   * without R2T is expected when it exceeds the immediate data and the
   * command's F bit was clear.
   */
  constructor(expected: number, immediate: Buffer | undefined, unsolicitedLength: number, moreUnsolicited: boolean, limits: CollectorLimits) {
    this.expected = expected;
    this.limits = limits;
    const immediateLength = immediate?.length ?? 0;
    if (moreUnsolicited && unsolicitedLength > immediateLength) {
      this.unsolicited = { offset: 0, length: unsolicitedLength, next: immediateLength, dataSN: 0 };
    }
    this.nextR2TOffset = immediateLength;
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

  /** R2Ts still owed data. */
  get outstandingR2Ts(): number {
    return this.r2ts.size;
  }

  /** True while unsolicited Data-Out may still arrive. */
  get unsolicitedOpen(): boolean {
    return this.unsolicited !== undefined;
  }

  /** Gives the collector its buffer (exactly `expected` bytes), once budget allows. */
  attach(buffer: Buffer): void {
    this.buffer = buffer;
    if (this.staging !== undefined) {
      this.staging.copy(buffer, 0, 0, this.receivedBefore());
      this.staging = undefined;
    }
  }

  /** Bytes staged before attach: everything received so far sits at [0, received). */
  private receivedBefore(): number {
    return this.received;
  }

  /**
   * One Data-Out PDU. Returns undefined when accepted, else why it is a
   * protocol violation (the caller rejects it and closes the connection).
   */
  dataOut(ttt: number, dataSN: number, offset: number, data: Buffer | undefined, final: boolean): string | undefined {
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
    if (ttt !== RESERVED_TAG && this.buffer === undefined) return 'solicited Data-Out before its R2T';
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

  /** Target transfer tags still owed data (an aborted task waits for them). */
  pendingTags(): number[] {
    return [...this.r2ts.keys()];
  }

  /** Stops asking for data: no more R2Ts; those outstanding may still complete. */
  stop(): void {
    this.nextR2TOffset = this.expected;
    this.unsolicited = undefined;
  }

  private store(offset: number, data: Buffer): void {
    if (this.buffer !== undefined) {
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
