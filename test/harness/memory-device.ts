import type { BlockDevice } from '../../head-agent/engine/block-device.js';
import { InvalidArgumentError, IoError } from '../../shared/errors.js';

// A BlockDevice over a Buffer: the test double for the layers above the I/O
// engine (NBD, iSCSI, SCSI units). It keeps BlockDevice's contract (checked by
// test/harness/block-device-compliance.ts in memory-device.test.ts) and lets a
// test observe and disturb every call: a log, concurrency counters, a gate
// that holds calls in flight, per-offset delays and injected failures.
//
// Every call goes through the same steps, in this order: logged, counted as
// active, gated, delayed, failed on demand, range-checked, then served.

/** How a call appears in the log and to the gate. */
export type DeviceOp = 'read' | 'readInto' | 'write' | 'write-fua' | 'flush' | 'zero' | 'discard';

export interface MemoryDeviceOptions {
  /** Device name (default 'mem'). */
  name?: string;
  /** false: keep no data (reads return zeros, writes land nowhere), for sizes beyond memory. Default true. */
  store?: boolean;
  /** Offer the optional readInto (exports then use it instead of read). Default false. */
  readInto?: boolean;
}

export class MemoryDevice implements BlockDevice {
  readonly name: string;
  /** The content (empty when the device stores nothing). */
  readonly data: Buffer;
  /** Every call as `${op} ${offset} ${length}` ('flush 0 0'), in arrival order; `calls.length` counts them. */
  readonly calls: string[] = [];
  /** Flushes that succeeded. */
  flushes = 0;
  /** Calls in progress now, and the most seen at once (a test may reset it). */
  active = 0;
  maxActive = 0;
  /** Awaited by every call after it is logged: lets a test hold I/O in flight or shuffle it. */
  gate: ((op: DeviceOp) => Promise<void>) | undefined;
  /** Milliseconds to delay calls at an exact offset (flush excluded). */
  readonly delayAt = new Map<number, number>();
  /** Thrown by every call (after the gate) while set. */
  fail: Error | undefined;
  /** Reads covering this byte fail with IoError while set. */
  failReadsAt: number | undefined;
  /** Present only with `readInto: true` (BlockDevice makes it optional). */
  readonly readInto?: (offset: number, dest: Buffer) => Promise<Buffer>;
  private readonly store: boolean;

  constructor(readonly size: number, options: MemoryDeviceOptions = {}) {
    if (!Number.isSafeInteger(size) || size < 0) throw new InvalidArgumentError(`memory device size ${size} must be a non-negative integer`);
    this.name = options.name ?? 'mem';
    this.store = options.store ?? true;
    this.data = Buffer.alloc(this.store ? size : 0);
    if (options.readInto === true) this.readInto = (offset, dest) => this.readIntoBuffer(offset, dest);
  }

  read(offset: number, length: number): Promise<Buffer> {
    return this.call('read', offset, length, () => {
      this.checkReadFailure(offset, length);
      return this.store ? Buffer.from(this.data.subarray(offset, offset + length)) : Buffer.alloc(length);
    });
  }

  private readIntoBuffer(offset: number, dest: Buffer): Promise<Buffer> {
    return this.call('readInto', offset, dest.length, () => {
      this.checkReadFailure(offset, dest.length);
      if (this.store) this.data.copy(dest, 0, offset, offset + dest.length);
      else dest.fill(0);
      return dest;
    });
  }

  write(offset: number, data: Buffer, fua: boolean): Promise<void> {
    return this.call(fua ? 'write-fua' : 'write', offset, data.length, () => {
      if (this.store) data.copy(this.data, offset);
    });
  }

  flush(): Promise<void> {
    return this.call('flush', 0, 0, () => {
      this.flushes++;
    });
  }

  writeZeroes(offset: number, length: number, _fua: boolean): Promise<void> {
    return this.call('zero', offset, length, () => this.zero(offset, length));
  }

  discard(offset: number, length: number): Promise<void> {
    return this.call('discard', offset, length, () => this.zero(offset, length));
  }

  private zero(offset: number, length: number): void {
    if (this.store) this.data.fill(0, offset, offset + length);
  }

  private async call<T>(op: DeviceOp, offset: number, length: number, serve: () => T): Promise<T> {
    this.calls.push(`${op} ${offset} ${length}`);
    this.active++;
    this.maxActive = Math.max(this.maxActive, this.active);
    try {
      if (this.gate !== undefined) await this.gate(op);
      const delay = op === 'flush' ? undefined : this.delayAt.get(offset);
      if (delay !== undefined) await new Promise((r) => setTimeout(r, delay));
      if (this.fail !== undefined) throw this.fail;
      if (op !== 'flush') this.checkRange(offset, length);
      return serve();
    } finally {
      this.active--;
    }
  }

  private checkRange(offset: number, length: number): void {
    if (!Number.isSafeInteger(offset) || offset < 0 || !Number.isSafeInteger(length) || length < 0 || offset + length > this.size) {
      throw new InvalidArgumentError(`device ${this.name}: range ${offset}+${length} is outside its ${this.size} bytes`, {
        device: this.name, offset, length, size: this.size,
      });
    }
  }

  private checkReadFailure(offset: number, length: number): void {
    const at = this.failReadsAt;
    if (at !== undefined && offset <= at && at < offset + length) {
      throw new IoError(`no replica could read ${this.name} at ${offset}`, { device: this.name, offset });
    }
  }
}
