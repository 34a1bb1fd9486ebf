// A token bucket in bytes, for throttling resync copies (ResyncTask.throttle_mibps)
// and the data I/O of a disk (Disk.setThrottle, --disk-throttle-mibps).
// take(n) spends n tokens at once and, when that leaves the bucket in debt,
// waits until the refill has paid the debt back: concurrent takers queue
// naturally (each sees the debt of those before it), and a request larger
// than the bucket still goes through, just later. The bucket starts full, so
// the first `capacity` bytes are not delayed.

export class TokenBucket {
  private readonly bytesPerMs: number;
  private readonly capacity: number;
  private tokens: number;
  private last = performance.now();

  /** `bytesPerSecond` <= 0 means unthrottled. */
  constructor(bytesPerSecond: number, capacity: number) {
    this.bytesPerMs = bytesPerSecond / 1000;
    this.capacity = capacity;
    this.tokens = capacity;
  }

  get unlimited(): boolean {
    return this.bytesPerMs <= 0;
  }

  /** Resolves when `n` bytes may go; rejects with the signal's reason if it aborts first. */
  take(n: number, signal?: AbortSignal): Promise<void> {
    if (this.unlimited) return Promise.resolve();
    const now = performance.now();
    this.tokens = Math.min(this.capacity, this.tokens + (now - this.last) * this.bytesPerMs);
    this.last = now;
    this.tokens -= n;
    if (this.tokens >= 0) return Promise.resolve();
    return delay(-this.tokens / this.bytesPerMs, signal);
  }
}

/** setTimeout as a promise that an AbortSignal can cut short (rejecting with its reason). */
export function delay(ms: number, signal?: AbortSignal): Promise<void> {
  if (signal?.aborted) return Promise.reject(signal.reason as Error);
  return new Promise((resolve, reject) => {
    const onAbort = () => {
      clearTimeout(timer);
      reject(signal!.reason as Error);
    };
    const timer = setTimeout(() => {
      signal?.removeEventListener('abort', onAbort);
      resolve();
    }, ms);
    signal?.addEventListener('abort', onAbort, { once: true });
  });
}
