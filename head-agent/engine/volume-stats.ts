import { IoStats } from '../../shared/metrics/io-stats.js';
import { LatencyHistogram } from '../../shared/metrics/latency-histogram.js';

// I/O counters of one attached volume, kept by the exports (NBD, iSCSI) as
// requests complete: plain numbers and fixed histograms, updated with +=,
// nothing allocated per request. The head's metrics (head-agent/metrics.ts)
// read them when Prometheus scrapes. Latency is from the request's arrival at
// the export to its completion by the engine (replicas included), in seconds.

export class VolumeStats extends IoStats {
  flushOps = 0;
  readonly flushLatency = new LatencyHistogram();
  /** WRITE_ZEROES / WRITE SAME with zeros: requests and bytes zeroed. */
  zeroOps = 0;
  zeroBytes = 0;
  /** TRIM / UNMAP: requests and bytes discarded. */
  discardOps = 0;
  discardBytes = 0;
  /** The write lease came to this head (a standby granted the lease). */
  leaseAcquired = 0;
  /** This head gave the write lease up to another head (ReleaseLease). */
  leaseReleased = 0;

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
}
