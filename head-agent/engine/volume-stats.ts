import { StaleEpochError } from '../../shared/errors.js';
import { LatencyHistogram } from '../../shared/metrics/latency-histogram.js';

// I/O counters of one attached volume, kept by the exports (NBD, iSCSI) as
// requests complete: plain numbers and fixed histograms, updated with +=,
// nothing allocated per request. The head's metrics (head-agent/metrics.ts)
// read them when Prometheus scrapes. Latency is from the request's arrival at
// the export to its completion by the engine (replicas included), in seconds.

export class VolumeStats {
  readOps = 0;
  readBytes = 0;
  readonly readLatency = new LatencyHistogram();
  writeOps = 0;
  writeBytes = 0;
  readonly writeLatency = new LatencyHistogram();
  flushOps = 0;
  readonly flushLatency = new LatencyHistogram();
  /** WRITE_ZEROES / WRITE SAME with zeros: requests and bytes zeroed. */
  zeroOps = 0;
  zeroBytes = 0;
  /** TRIM / UNMAP: requests and bytes discarded. */
  discardOps = 0;
  discardBytes = 0;
  /** Requests answered with an error (refused, fenced, I/O errors). */
  errors = 0;
  /** Requests refused because this head no longer holds the volume's lease (StaleEpochError). */
  fencedRequests = 0;
  /** The write lease came to this head (a standby granted the lease). */
  leaseAcquired = 0;
  /** This head gave the write lease up to another head (ReleaseLease). */
  leaseReleased = 0;

  /** A read of `bytes` that took `seconds` completed. */
  read(bytes: number, seconds: number): void {
    this.readOps += 1;
    this.readBytes += bytes;
    this.readLatency.observe(seconds);
  }

  write(bytes: number, seconds: number): void {
    this.writeOps += 1;
    this.writeBytes += bytes;
    this.writeLatency.observe(seconds);
  }

  flush(seconds: number): void {
    this.flushOps += 1;
    this.flushLatency.observe(seconds);
  }

  zero(bytes: number): void {
    this.zeroOps += 1;
    this.zeroBytes += bytes;
  }

  discard(bytes: number): void {
    this.discardOps += 1;
    this.discardBytes += bytes;
  }

  /** A request failed with `err` (undefined: refused before the engine, e.g. a bad range). */
  failed(err?: unknown): void {
    this.errors += 1;
    if (err instanceof StaleEpochError) this.fencedRequests += 1;
  }
}
