import { TokenBucket } from '../../shared/token-bucket.js';

// A disk's bandwidth throttle (Disk.setThrottle, `vsky storage-node
// --disk-throttle-mibps`): every data read and write (chunk data, resync
// copies, zero-fills, scrubs) first takes its bytes from one token bucket per
// disk, reads and writes alike, so a file on a fast SSD can stand in for a
// spindle of N MiB/s in benchmarks. Chunk-record (metadata) writes and
// fdatasync are not counted. Off (the default), the only cost is one branch per I/O.

/** Burst a throttled disk allows after a pause: this fraction of a second of its rate (at least 64 KiB). */
const BURST_S = 1 / 32;

export class BandwidthCap {
  private bucket: TokenBucket | undefined;
  private mibps = 0;

  /** The cap in MiB/s (0: none). */
  get limitMibps(): number {
    return this.mibps;
  }

  get on(): boolean {
    return this.bucket !== undefined;
  }

  /** Caps data reads and writes together at `mibps` MiB/s (0 or less: no cap). I/O already waiting keeps its turn. */
  set(mibps: number): void {
    if (!Number.isFinite(mibps) || mibps <= 0) {
      this.mibps = 0;
      this.bucket = undefined;
      return;
    }
    const bytesPerSecond = mibps * 1024 * 1024;
    this.mibps = mibps;
    this.bucket = new TokenBucket(bytesPerSecond, Math.max(64 * 1024, Math.round(bytesPerSecond * BURST_S)));
  }

  /** Resolves once `length` bytes may pass (at once when off). */
  take(length: number): Promise<void> {
    return this.bucket === undefined ? Promise.resolve() : this.bucket.take(length);
  }
}
