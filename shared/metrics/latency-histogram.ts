// A latency histogram for the data path: fixed bucket bounds in seconds,
// plain numeric counts, no allocation per observation. Daemons keep one per
// volume or disk and operation, update it with observe() on the hot path and
// hand it to Prometheus only at scrape time (histogram-family.ts), because
// prom-client's own Histogram allocates on every observe (label objects and a
// hash string), even through a pre-bound child.

/** Upper bounds in seconds: 50 us .. 10 s (the NBD/data-protocol range: page-cache hits to a stuck fdatasync). */
export const LATENCY_BUCKETS_S: readonly number[] = Object.freeze([
  0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10,
]);

export class LatencyHistogram {
  readonly bounds: readonly number[];
  /** counts[i]: observations in (bounds[i-1], bounds[i]]; counts[bounds.length]: above the last bound. */
  readonly counts: Float64Array;
  /** Sum of the observed values, seconds. */
  sum = 0;
  /** Number of observations. */
  count = 0;

  constructor(bounds: readonly number[] = LATENCY_BUCKETS_S) {
    this.bounds = bounds;
    this.counts = new Float64Array(bounds.length + 1);
  }

  /** Records one duration in seconds (negative or NaN values are taken as 0). */
  observe(seconds: number): void {
    const v = seconds > 0 ? seconds : 0;
    const b = this.bounds;
    let i = 0;
    while (i < b.length && v > b[i]!) i++;
    this.counts[i]! += 1;
    this.sum += v;
    this.count += 1;
  }

  /** Records the time since `startMs` (a performance.now() reading). */
  observeSince(startMs: number): void {
    this.observe((performance.now() - startMs) / 1000);
  }

  /** Cumulative count of observations <= bounds[i] (i = bounds.length: all of them). */
  cumulative(i: number): number {
    let n = 0;
    for (let j = 0; j <= i && j < this.counts.length; j++) n += this.counts[j]!;
    return n;
  }
}
