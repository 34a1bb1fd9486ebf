import { StaleEpochError } from '../errors.js';
import { LatencyHistogram } from './latency-histogram.js';

// The I/O counters every data-path daemon keeps per object (a head's volume,
// a node's disk): plain numbers and fixed histograms updated with +=, nothing
// allocated per request; each daemon's metrics read them at scrape time.

export class IoStats {
  readOps = 0;
  readBytes = 0;
  readonly readLatency = new LatencyHistogram();
  writeOps = 0;
  writeBytes = 0;
  readonly writeLatency = new LatencyHistogram();
  /** Requests answered with an error (refused, fenced, I/O errors). */
  errors = 0;
  /** Requests refused for a stale lease epoch (docs/design.md rule 3). */
  fencedRequests = 0;

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

  /** A request failed with `err` (undefined: refused before it reached the engine, e.g. a bad range). */
  failed(err?: unknown): void {
    this.errors += 1;
    if (err instanceof StaleEpochError) this.fencedRequests += 1;
  }
}
