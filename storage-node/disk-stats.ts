import { StaleEpochError } from '../shared/errors.js';
import { LatencyHistogram } from '../shared/metrics/latency-histogram.js';

// Data-path counters of one disk of this node: updated by the data server
// as requests complete and by the disk itself around fdatasync, with +=, no
// allocation per request; read by storage-node/metrics.ts at scrape time.
// Latency is from the request's dispatch on this node to its reply being
// ready (disk queueing, throttling and first-write zero-fill included).

export class DiskStats {
  readOps = 0;
  readBytes = 0;
  readonly readLatency = new LatencyHistogram();
  writeOps = 0;
  writeBytes = 0;
  readonly writeLatency = new LatencyHistogram();
  /** FLUSH requests that synced this disk. */
  flushOps = 0;
  /** Every fdatasync of the disk file (group-committed: one may serve many FLUSH and FUA requests). */
  readonly syncLatency = new LatencyHistogram();
  /** Data-protocol requests on the disk's chunks that were answered with an error. */
  errors = 0;
  /** Mutations refused for a stale lease epoch (docs/design.md rule 3). */
  fencedRequests = 0;
  /** Bytes copied into this disk's chunks by resyncs. */
  resyncCopyBytes = 0;

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

  failed(err: unknown): void {
    this.errors += 1;
    if (err instanceof StaleEpochError) this.fencedRequests += 1;
  }
}
