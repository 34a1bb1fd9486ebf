import fs from 'node:fs';
import type { Chunk, Done } from '../chunk.js';
import type { DiskStats } from '../disk-stats.js';
import { encodeRecord } from '../disk-format/chunk-record.js';
import { SECTOR } from '../disk-format/layout.js';
import { POOL_SPELL_MS, SLOW_WRITE_MS, SyncIo, type SyncIoName } from '../sync-io.js';

// Chunk record writes of one disk (docs/snapshots.md "Record writes"). A
// record update writes the A/B slot that does not hold the newest valid
// record (disk-format.ts), one write at a time per chunk (two in flight
// could tear both copies). Group commit: every persist request that arrives
// while a chunk's record write is scheduled or in flight is served by the
// next write, which encodes the record as it is in memory then. A write is
// started in the check phase of the event loop (setImmediate), after every
// I/O completion of the loop's poll phase was handled: the first writes
// whose data landed in the same loop iteration (write-gather.ts writes the
// data of a tick's requests on the loop, pool writes complete in batches)
// share one record write, without a thread-pool hop in between.
//
// Where it is written (sync-io.ts): records up to RECORD_SYNC_MAX bytes are
// written on the event loop while that stays fast, like data writes, so a
// first write pays no thread-pool hop between its data and its record; a
// slow or failed one sends the disk's records to the pool for a while. The
// chunk table is read whole when the disk opens, so its pages are in the
// page cache and a slot write that covers part of a page does not read the
// device first (if the page was evicted it does, once: a slow write goes to
// the pool). Durability is the same either way: a write into the page cache,
// made durable by the next fdatasync (FUA, FLUSH, control operations).
// VSKY_RECORD_IO=pool (or VSKY_DISK_IO=pool) keeps record writes on the pool.

/** Records up to this size may be written on the event loop (a 65536-region record is 16896 bytes). */
export const RECORD_SYNC_MAX = 32 * 1024;

export function defaultRecordIo(): SyncIoName {
  return process.env.VSKY_DISK_IO === 'pool' || process.env.VSKY_RECORD_IO === 'pool' ? 'pool' : 'sync';
}

/** What the writer needs from its disk (Disk passes closures over its private state). */
export interface RecordDisk {
  fd(): number;
  /** The error every I/O is refused with now (failed, closed, fault injection), or undefined. */
  refuse(): Error | undefined;
  /** Counts an I/O in flight (close waits for it). */
  ioStart(): void;
  ioDone(): void;
  /** Counts an OS error (maybe failing the disk) and wraps it. */
  failed(err: NodeJS.ErrnoException, position: number): Error;
  readonly stats: DiskStats;
  readonly recordSize: number;
  readonly tableOffset: number;
  readonly idBytes: Buffer;
}

export class RecordWriter {
  private readonly disk: RecordDisk;
  private readonly mode: SyncIo;
  /** Encoding buffer of synchronous writes (each is done before the next starts). */
  private readonly scratch: Buffer;
  /** Chunks whose next record write starts in this loop iteration's check phase. */
  private due: Chunk[] = [];
  private scheduled = false;

  constructor(disk: RecordDisk, mode: SyncIoName = defaultRecordIo()) {
    this.disk = disk;
    this.mode = new SyncIo(mode, SLOW_WRITE_MS, POOL_SPELL_MS, { maxRun: RECORD_SYNC_MAX, align: SECTOR, unlessPoolStuck: false });
    this.scratch = Buffer.alloc(disk.recordSize);
  }

  /** Synchronous record writes so far, and those that sent the records to the pool (tests). */
  get syncRuns(): number {
    return this.mode.syncRuns;
  }

  /** Writes the chunk's record as it is in memory when the write starts; cb once it is written (or failed). */
  persist(chunk: Chunk, cb: Done): void {
    if (chunk.persistQueued !== undefined) {
      chunk.persistQueued.push(cb);
      return;
    }
    chunk.persistQueued = [cb];
    if (!chunk.persisting) this.schedule(chunk);
  }

  private schedule(chunk: Chunk): void {
    this.disk.ioStart(); // a scheduled write counts as in flight: close waits for it
    this.due.push(chunk);
    if (this.scheduled) return;
    this.scheduled = true;
    setImmediate(this.startDue);
  }

  private readonly startDue = (): void => {
    this.scheduled = false;
    const due = this.due;
    this.due = [];
    for (const chunk of due) {
      this.start(chunk);
      this.disk.ioDone();
    }
  };

  private start(chunk: Chunk): void {
    const waiters = chunk.persistQueued!;
    chunk.persistQueued = undefined;
    const failure = this.disk.refuse();
    if (failure !== undefined) return this.finish(chunk, waiters, 0, 0, failure);
    const { recordSize, tableOffset, idBytes } = this.disk;
    const seq = chunk.seq + 1;
    const slot = chunk.newestSlot === 0 ? 1 : 0;
    const position = tableOffset + (chunk.index * 2 + slot) * recordSize;
    const sync = this.mode.sync(position, recordSize);
    let buf: Buffer;
    try {
      buf = encodeRecord(chunk.rec, seq, chunk.index, idBytes, recordSize, sync ? this.scratch : undefined);
    } catch (err) {
      return this.finish(chunk, waiters, 0, 0, err as Error);
    }
    chunk.persisting = true;
    this.disk.stats.recordWrites++;
    this.disk.stats.recordWriteBytes += recordSize;
    if (sync) return this.finish(chunk, waiters, seq, slot, this.writeSync(buf, position));
    this.disk.ioStart();
    this.writePool(buf, 0, recordSize, position, (err) => {
      this.disk.ioDone();
      this.finish(chunk, waiters, seq, slot, err);
    });
  }

  private finish(chunk: Chunk, waiters: Done[], seq: number, slot: number, err: Error | null): void {
    // On failure the slot may be torn: newestSlot stays, so the next attempt rewrites the same slot.
    if (err === null) {
      chunk.seq = seq;
      chunk.newestSlot = slot;
    }
    chunk.persisting = false;
    if (chunk.persistQueued !== undefined) this.schedule(chunk);
    for (const w of waiters) w(err);
  }

  private writeSync(buf: Buffer, position: number): Error | null {
    const started = performance.now();
    let err: NodeJS.ErrnoException | null = null;
    try {
      for (let done = 0; done < buf.length;) {
        const n = fs.writeSync(this.disk.fd(), buf, done, buf.length - done, position + done);
        if (n === 0) throw Object.assign(new Error('disk accepted no bytes'), { code: 'EIO' });
        done += n;
      }
    } catch (e) {
      err = e as NodeJS.ErrnoException;
    }
    this.mode.observe(performance.now() - started, err !== null);
    return err === null ? null : this.disk.failed(err, position);
  }

  private writePool(buf: Buffer, bufOffset: number, length: number, position: number, cb: Done): void {
    const started = this.mode.poolStart();
    fs.write(this.disk.fd(), buf, bufOffset, length, position, (err, n) => {
      this.mode.poolDone(started, err !== null);
      if (err === null && n > 0 && n < length) return this.writePool(buf, bufOffset + n, length - n, position + n, cb);
      if (err === null && n === 0) return cb(this.disk.failed(Object.assign(new Error('disk accepted no bytes'), { code: 'EIO' }), position));
      cb(err === null ? null : this.disk.failed(err, position));
    });
  }
}
