import fs from 'node:fs';
import type { Done } from './chunk.js';

// Data writes of one tick that continue each other on disk leave as ONE
// pwritev. A head's sequential stream arrives as many 64 KiB WRITEs in one
// socket read (up to its queue depth); written one by one they take one
// thread-pool hop each and contend for the file's inode lock in the kernel
// (4 pool threads writing one disk file). Gathered, a burst of 16 is one hop
// and one locked copy. Only exactly adjacent writes are joined, in arrival
// order; a write that does not continue the open run sends the run and
// opens a new one, and the run still open is sent at the end of the tick
// (process.nextTick: after the data server has dispatched every request of
// the socket read). Nothing is acknowledged before its run is written; a
// failed run fails every write in it (which of its parts landed is unknown).

/** Most buffers in one pwritev (IOV_MAX is 1024 on Linux). */
const MAX_RUN_BUFFERS = 64;
/** Most bytes in one pwritev. */
const MAX_RUN_BYTES = 8 * 1024 * 1024;

interface Run {
  position: number;
  length: number;
  buffers: Buffer[];
  callbacks: Done[];
}

/** How a written run reports back: once per run, with the OS error if any. */
export type RunDone = (err: NodeJS.ErrnoException | null, position: number, callbacks: Done[]) => void;

export class WriteGatherer {
  private readonly fd: () => number;
  private readonly done: RunDone;
  private open: Run | undefined;
  private scheduled = false;
  /** Runs sent and writes in them (stats, tests). */
  runs = 0;
  writes = 0;

  constructor(fd: () => number, done: RunDone) {
    this.fd = fd;
    this.done = done;
  }

  /** Queues `data` for `position`; `cb` is handed to the run's RunDone once the run is written. */
  add(data: Buffer, position: number, cb: Done): void {
    this.writes++;
    const run = this.open;
    if (run !== undefined && run.position + run.length === position && run.buffers.length < MAX_RUN_BUFFERS && run.length + data.length <= MAX_RUN_BYTES) {
      run.buffers.push(data);
      run.callbacks.push(cb);
      run.length += data.length;
      return;
    }
    if (run !== undefined) this.send(run);
    this.open = { position, length: data.length, buffers: [data], callbacks: [cb] };
    if (!this.scheduled) {
      this.scheduled = true;
      process.nextTick(this.flush);
    }
  }

  private readonly flush = (): void => {
    this.scheduled = false;
    const run = this.open;
    if (run !== undefined) this.send(run);
  };

  private send(run: Run): void {
    if (this.open === run) this.open = undefined;
    this.runs++;
    this.writeFrom(run, run.buffers, run.position, run.length);
  }

  /** Writes `buffers` (`length` bytes) at `position`, going on after a short write. */
  private writeFrom(run: Run, buffers: Buffer[], position: number, length: number): void {
    const next = (err: NodeJS.ErrnoException | null, n: number): void => {
      if (err === null && n < length) {
        if (n === 0) return this.done(Object.assign(new Error('disk accepted no bytes'), { code: 'EIO' }), position, run.callbacks);
        return this.writeFrom(run, remaining(buffers, n), position + n, length - n);
      }
      this.done(err, run.position, run.callbacks);
    };
    if (buffers.length === 1) fs.write(this.fd(), buffers[0]!, 0, length, position, next);
    else fs.writev(this.fd(), buffers, position, next);
  }
}

/** `buffers` without their first `skip` bytes (views, no copies). */
function remaining(buffers: Buffer[], skip: number): Buffer[] {
  const out: Buffer[] = [];
  for (const b of buffers) {
    if (skip >= b.length) {
      skip -= b.length;
      continue;
    }
    out.push(skip > 0 ? b.subarray(skip) : b);
    skip = 0;
  }
  return out;
}
