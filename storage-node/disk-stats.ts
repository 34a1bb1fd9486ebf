import { IoStats } from '../shared/metrics/io-stats.js';
import { LatencyHistogram } from '../shared/metrics/latency-histogram.js';

// Data-path counters of one disk of this node: updated by the data server
// as requests complete and by the disk itself around fdatasync, with +=, no
// allocation per request; read by storage-node/metrics.ts at scrape time.
// Latency is from the request's dispatch on this node to its reply being
// ready (disk queueing, throttling and first-write zero-fill included).

export class DiskStats extends IoStats {
  /** FLUSH requests that synced this disk. */
  flushOps = 0;
  /** Every fdatasync of the disk file (group-committed: one may serve many FLUSH and FUA requests). */
  readonly syncLatency = new LatencyHistogram();
  /** Chunk record writes (each first write of a region, mark, epoch raise...: coalesced per chunk) and their bytes. */
  recordWrites = 0;
  recordWriteBytes = 0;
  /** Bytes copied into this disk's chunks by resyncs. */
  resyncCopyBytes = 0;
}
