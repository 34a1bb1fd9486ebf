import fs from 'node:fs';
import type { Done } from './chunk.js';
import { SyncIo } from './sync-io.js';

// Data writes of one tick that continue each other on disk leave as ONE
// pwritev. A head's sequential stream arrives as many 64 KiB WRITEs in one
// socket read (up to its queue depth); written one by one they take one
// syscall each and contend for the file's inode lock in the kernel. Only
// exactly adjacent writes are joined, in arrival order; a write that does not
// continue the open run closes it and opens a new one. Every run of the tick
// is written at the end of the tick (process.nextTick: after the data server
// has dispatched every request of the socket read), in arrival order, so a
// callback never runs inside add(). Nothing is acknowledged before its run is
// written; a failed run fails every write in it (which of its parts landed is
// unknown).
//
// How a run is written (sync-io.ts): on the event loop (pwrite/pwritev
// into the page cache, a few microseconds) or through libuv's thread pool.
// Measured on 4 KiB writes at QD16 (docs/benchmarks.md, issue 12 fourth
// pass): the pool hop cost each node ~5 futex calls and two thread switches
// per write, half of its CPU. A synchronous write that turns slow (the kernel
// throttling dirty pages) or fails sends the disk to the pool until pool
// writes are fast again; unaligned runs always go to the pool. Durability is
// unchanged: the file is not O_SYNC in either mode, and FUA and FLUSH still
// fdatasync (async) before their reply.

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
  private readonly mode: SyncIo;
  private open: Run | undefined;
  /** Runs closed this tick, written at its end (with the open one). */
  private closed: Run[] = [];
  private scheduled = false;
  /** Runs sent and writes in them (stats, tests). */
  runs = 0;
  writes = 0;

  constructor(fd: () => number, done: RunDone, mode: SyncIo = new SyncIo()) {
    this.fd = fd;
    this.done = done;
    this.mode = mode;
  }

  /** Queues `data` for `position`; `cb` is handed to the run's RunDone once the run is written (never inside add). */
  add(data: Buffer, position: number, cb: Done): void {
    this.writes++;
    const run = this.open;
    if (run !== undefined && run.position + run.length === position && run.buffers.length < MAX_RUN_BUFFERS && run.length + data.length <= MAX_RUN_BYTES) {
      run.buffers.push(data);
      run.callbacks.push(cb);
      run.length += data.length;
      return;
    }
    if (run !== undefined) this.closed.push(run);
    this.open = { position, length: data.length, buffers: [data], callbacks: [cb] };
    if (!this.scheduled) {
      this.scheduled = true;
      process.nextTick(this.flush);
    }
  }

  private readonly flush = (): void => {
    this.scheduled = false;
    const runs = this.closed;
    const last = this.open;
    this.closed = [];
    this.open = undefined;
    for (const run of runs) this.send(run);
    if (last !== undefined) this.send(last);
  };

  private send(run: Run): void {
    this.runs++;
    if (this.mode.sync(run.position, run.length)) this.writeSync(run);
    else this.writeFrom(run, run.buffers, run.position, run.length);
  }

  /** Writes the run on the event loop (page cache), going on after a short write; reports at once. */
  private writeSync(run: Run): void {
    const started = performance.now();
    let err: NodeJS.ErrnoException | null = null;
    try {
      let { buffers, position, length } = run;
      for (;;) {
        const n = buffers.length === 1 ? fs.writeSync(this.fd(), buffers[0]!, 0, length, position) : fs.writevSync(this.fd(), buffers, position);
        if (n >= length) break;
        if (n === 0) throw Object.assign(new Error('disk accepted no bytes'), { code: 'EIO' });
        buffers = remaining(buffers, n);
        position += n;
        length -= n;
      }
    } catch (e) {
      err = e as NodeJS.ErrnoException;
    }
    this.mode.observe(performance.now() - started, err !== null);
    this.done(err, run.position, run.callbacks);
  }

  /** Writes `buffers` (`length` bytes) at `position` through the thread pool, going on after a short write. */
  private writeFrom(run: Run, buffers: Buffer[], position: number, length: number): void {
    const started = this.mode.poolStart();
    const next = (err: NodeJS.ErrnoException | null, n: number): void => {
      this.mode.poolDone(started, err !== null);
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
