// A bounded pool of I/O buffers of a few fixed sizes. The data path's
// buffers live across ticks (until a socket or the disk is done with them);
// allocating a fresh 64 KiB ArrayBuffer each time drives V8 into frequent
// mark-compacts (measured: 11-13% of the head agent's CPU under QD16).
// Buffers of other sizes are simply allocated. acquire() never blocks; the
// pool keeps at most `maxPerSize` free buffers per size and `maxBytes` in all,
// so the memory it holds idle is bounded.

export class BufferPool {
  private readonly free = new Map<number, Buffer[]>();
  private readonly owned = new WeakSet<ArrayBuffer>();
  /** Buffers sitting in the pool: a second release of one is ignored (two users would share it). */
  private readonly idle = new WeakSet<ArrayBuffer>();
  private readonly maxPerSize: number;
  private readonly maxBytes: number;
  private readonly sizes: Set<number>;
  private freeBytes = 0;

  constructor(sizes: number[], maxPerSize = 64, maxBytes = 16 * 1024 * 1024) {
    this.sizes = new Set(sizes);
    this.maxPerSize = maxPerSize;
    this.maxBytes = maxBytes;
    for (const s of sizes) this.free.set(s, []);
  }

  /** A buffer of exactly `length` bytes (contents undefined). */
  acquire(length: number): Buffer {
    const list = this.free.get(length);
    const pooled = list?.pop();
    if (pooled !== undefined) {
      this.idle.delete(pooled.buffer as ArrayBuffer);
      this.freeBytes -= length;
      return pooled;
    }
    if (!this.sizes.has(length)) return Buffer.allocUnsafe(length);
    const buf = Buffer.allocUnsafeSlow(length);
    this.owned.add(buf.buffer as ArrayBuffer);
    return buf;
  }

  /** Gives a buffer back; views and foreign buffers are ignored. Never touch it afterwards. */
  release(buf: Buffer): void {
    const ab = buf.buffer as ArrayBuffer;
    if (!this.owned.has(ab) || buf.byteOffset !== 0 || this.idle.has(ab)) return;
    const list = this.free.get(buf.length);
    if (list === undefined || list.length >= this.maxPerSize || this.freeBytes + buf.length > this.maxBytes) return;
    list.push(buf);
    this.idle.add(ab);
    this.freeBytes += buf.length;
  }

  /** Bytes held idle in the pool now. */
  get idleBytes(): number {
    return this.freeBytes;
  }
}

/** Sizes that block clients use most (4 KiB to 1 MiB, powers of two). */
export const COMMON_IO_SIZES = [4096, 8192, 16384, 32768, 65536, 131072, 262144, 524288, 1048576];
