import { readFileSync } from 'node:fs';

/** Samples the resident set size (bytes) of pids while a task runs; returns each pid's peak. */
export async function peakRss<T>(pids: number[], task: () => Promise<T>): Promise<{ result: T; peak: Map<number, number> }> {
  const peak = new Map<number, number>(pids.map((p) => [p, 0]));
  const sample = (): void => {
    for (const pid of pids) {
      try {
        const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
        if (m) peak.set(pid, Math.max(peak.get(pid)!, Number(m[1]) * 1024));
      } catch { /* process gone */ }
    }
  };
  const timer = setInterval(sample, 200);
  try {
    const result = await task();
    sample();
    return { result, peak };
  } finally {
    clearInterval(timer);
  }
}
