import fs from 'node:fs';
import { ConflictError, CorruptMetadataError, IoError, NotFoundError } from '../shared/errors.js';
import { moduleLogger, type Logger } from '../shared/logger.js';
import { Chunk, type ChunkDisk, type Done } from './chunk.js';
import { DiskStats } from './disk-stats.js';
import { isBlank, uuidToBytes } from './disk-format/bytes.js';
import { pickNewest } from './disk-format/chunk-record.js';
import { FORMAT_VERSION, SUPERBLOCK_SIZE } from './disk-format/layout.js';
import { format } from './disk/format.js';
import { createSparse, deviceSize, p, readFully, writeSuperblockDurably } from './disk/file-io.js';
import { decodeSuperblock, type Superblock } from './disk-format/superblock.js';
import { DiskFailedError } from '../shared/data-protocol/status.js';
import { ioError } from './errors.js';
import { BandwidthCap } from './disk/bandwidth-cap.js';
import { WriteGatherer } from './write-gather.js';
import { HolePuncher } from './disk/hole-punch.js';
import { RecordWriter } from './disk/record-writer.js';
import { readSyncIo } from './sync-io.js';

// One disk (a file created sparse, or a block device): formats or opens it,
// holds its chunk table in memory, and does every I/O on it through the fs
// callback APIs on one fd (no FileHandle promises on the hot path). Record
// writes: disk/record-writer.ts (A/B slots, one at a time per chunk,
// coalesced).
//
// Disk failure: an errno from the OS on a read, write or fdatasync is counted;
// DISK_FAIL_THRESHOLD of them mark the disk failed for good (until the node
// restarts or the disk is re-added): every later I/O is refused with
// DISK_FAILED and heartbeats report state "failed", so the manager replaces its
// chunks. A single error does not (a one-off media error on one sector should
// fail that request, not a whole disk). Fault injection (setFaulty) is a
// separate, reversible switch for chaos tests.
// Data I/O can be throttled (setThrottle; disk/bandwidth-cap.ts).

/** OS I/O errors on one disk before it is declared failed. */
export const DISK_FAIL_THRESHOLD = 3;
/** Record rewrites in flight at once while upgrading a disk's format. */
const UPGRADE_BATCH = 256;

export interface OpenDiskOptions {
  /** Create a sparse file of this many bytes when the path does not exist. */
  size?: number;
  /** Chunk size used when the disk must be formatted. */
  chunkSize: number;
  /** Region size used when the disk must be formatted (default: chunk size / 4096, defaultRegionSize). */
  regionSize?: number;
  /** Data I/O bandwidth cap in MiB/s, reads and writes together (0 or undefined: none). */
  throttleMibps?: number;
}


export type DiskState = 'active' | 'closing' | 'closed';

export class Disk implements ChunkDisk {
  readonly path: string;
  readonly sb: Superblock;
  readonly id: string;
  readonly chunks: Chunk[] = [];
  state: DiskState = 'active';
  /** OS I/O errors seen since open. */
  ioErrors = 0;
  /** Why the disk was declared failed (DISK_FAIL_THRESHOLD errors), or undefined while healthy. */
  failure: string | undefined;
  /** Called when the disk's reported state changes (failed, fault injection on/off). */
  onStateChange: ((disk: Disk) => void) | undefined;
  /** Data-path counters (storage-node/metrics.ts). */
  readonly stats = new DiskStats();
  private readonly idBytes: Buffer;
  private fd: number;
  private faulty = false;
  private readonly log: Logger;
  private ioInflight = 0;
  private ioDrainWaiters: (() => void)[] = [];
  private syncRunning = false;
  private syncQueued: Done[] = [];
  /** Data I/O bandwidth cap (setThrottle). */
  private readonly cap = new BandwidthCap();
  /** Small reads on the event loop while they stay fast (sync-io.ts). */
  private readonly reads = readSyncIo();
  /** Data writes of one tick that continue each other leave as one pwritev. */
  private readonly gatherer = new WriteGatherer(() => this.fd, (err, position, callbacks) => {
    const result = err === null ? null : this.failed(err, 'write', position);
    for (const cb of callbacks) {
      this.ioDone();
      cb(result);
    }
  });

  /** Hole punches of discarded ranges (disk/hole-punch.ts), through this disk's own open file. */
  readonly holes: HolePuncher;
  /** Chunk record writes (disk/record-writer.ts): A/B slots, one per chunk at a time, coalesced. */
  readonly records: RecordWriter;

  private constructor(path: string, fd: number, sb: Superblock) {
    this.path = path;
    this.fd = fd;
    this.sb = sb;
    this.id = sb.diskId;
    this.idBytes = uuidToBytes(sb.diskId);
    this.log = moduleLogger('disk', { disk: sb.diskId, path });
    this.holes = new HolePuncher(() => `/proc/${process.pid}/fd/${this.fd}`, this.log);
    this.records = new RecordWriter({
      fd: () => this.fd, refuse: () => this.refuse(), ioStart: () => void this.ioInflight++, ioDone: () => this.ioDone(),
      failed: (err, position) => this.failed(err, 'record write', position), stats: this.stats,
      recordSize: sb.recordSize, tableOffset: sb.tableOffset, idBytes: this.idBytes,
    });
  }

  /**
   * Opens a disk, creating (sparse) and formatting it when new, upgrading an
   * older format (version 2) in place. Throws CorruptMetadataError on damaged metadata.
   */
  static async open(path: string, opts: OpenDiskOptions): Promise<Disk> {
    if (!fs.existsSync(path)) {
      if (!opts.size) throw new NotFoundError(`disk ${path} does not exist (give a size to create it)`, { path });
      await createSparse(path, opts.size);
    }
    const fd = await p<number>((cb) => fs.open(path, 'r+', cb));
    try {
      const size = await deviceSize(fd);
      const head = Buffer.alloc(SUPERBLOCK_SIZE);
      await readFully(fd, head, 0);
      const sb = isBlank(head) ? await format(fd, size, opts.chunkSize, opts.regionSize || undefined) : decodeSuperblock(head);
      if (size < sb.dataOffset + sb.chunkCount * sb.chunkSize) {
        throw new CorruptMetadataError(`disk ${path} is ${size} bytes but its superblock describes ${sb.dataOffset + sb.chunkCount * sb.chunkSize}`, { path });
      }
      const disk = new Disk(path, fd, sb);
      const older = await disk.loadTable();
      if (sb.formatVersion < FORMAT_VERSION) await disk.upgrade(older);
      disk.setThrottle(opts.throttleMibps ?? 0);
      return disk;
    } catch (err) {
      fs.close(fd, () => {});
      throw err;
    }
  }

  /** Reads the chunk table; returns the chunks whose newest record has an older format's layout. */
  private async loadTable(): Promise<Chunk[]> {
    const { chunkCount, recordSize, tableOffset, dataOffset, chunkSize, regionBits } = this.sb;
    const table = Buffer.alloc(chunkCount * 2 * recordSize);
    if (table.length > 0) await readFully(this.fd, table, tableOffset);
    let invalid = 0;
    const older: Chunk[] = [];
    for (let i = 0; i < chunkCount; i++) {
      const at = i * 2 * recordSize;
      const picked = pickNewest(table.subarray(at, at + recordSize), table.subarray(at + recordSize, at + 2 * recordSize),
        i, this.idBytes, regionBits);
      invalid += picked.invalidSlots;
      const chunk = new Chunk(this, i, dataOffset + i * chunkSize, chunkSize, regionBits, picked.record, picked.seq, picked.newestSlot);
      this.chunks.push(chunk);
      if (picked.newestSlot >= 0 && picked.formatVersion < FORMAT_VERSION) older.push(chunk);
    }
    // One torn slot per chunk is the expected trace of a crash mid-update; the older slot was used.
    if (invalid > 0) this.log.warn({ invalidSlots: invalid }, 'chunk table: ignored torn or invalid record slots');
    return older;
  }

  /**
   * Upgrades an older-format disk in place (disk-format.ts): rewrites the
   * records of `older` in the current layout, each by an ordinary A/B update
   * (the previous record stays in the other slot until then), makes them
   * durable, then writes the superblock with the current version. A crash
   * anywhere leaves a disk that opens as before and finishes the upgrade.
   */
  private async upgrade(older: Chunk[]): Promise<void> {
    const from = this.sb.formatVersion;
    for (let i = 0; i < older.length; i += UPGRADE_BATCH) {
      await Promise.all(older.slice(i, i + UPGRADE_BATCH).map((c) => c.persist()));
    }
    await p<void>((cb) => fs.fdatasync(this.fd, cb));
    await writeSuperblockDurably(this.fd, { ...this.sb, formatVersion: FORMAT_VERSION });
    this.sb.formatVersion = FORMAT_VERSION;
    this.log.info({ from, to: FORMAT_VERSION, records: older.length }, 'upgraded disk format in place');
  }

  /**
   * Stamps the disk with its cluster's id (durably, in the superblock), once:
   * a disk of another cluster is refused (ConflictError), the same id again
   * is a no-op.
   */
  async joinCluster(clusterId: string): Promise<void> {
    if (this.sb.clusterId === clusterId) return;
    if (this.sb.clusterId !== '') {
      throw new ConflictError(`disk ${this.id} (${this.path}) belongs to cluster ${this.sb.clusterId}, not ${clusterId}: `
        + 'it holds another cluster\'s data; remove it from this node, or zero its first 4 KiB to reuse it (its data is lost)', { diskId: this.id });
    }
    await writeSuperblockDurably(this.fd, { ...this.sb, clusterId });
    this.sb.clusterId = clusterId;
    this.log.info({ clusterId }, 'disk joined the cluster');
  }

  get faultInjected(): boolean {
    return this.faulty;
  }

  /** "failed" while fault injection is on or after DISK_FAIL_THRESHOLD OS errors, else "active". */
  get reportedState(): 'active' | 'failed' {
    return this.faulty || this.failure !== undefined ? 'failed' : 'active';
  }

  /** Fault injection (chaos tests): while on, every I/O fails with IO_ERROR. */
  setFaulty(on: boolean): void {
    if (this.faulty === on) return;
    this.faulty = on;
    // Loud on purpose: a disk left faulty by accident looks exactly like a dead one.
    if (on) this.log.warn({ faulty: on }, 'FAULT INJECTION ON: this disk now fails every I/O (turn it off with SetDiskFault faulty=false)');
    else this.log.warn({ faulty: on }, 'fault injection off: disk serves I/O again');
    this.onStateChange?.(this);
  }

  /** Data I/O bandwidth cap in MiB/s (0: none). */
  get throttleMibps(): number {
    return this.cap.limitMibps;
  }

  /** Caps data reads and writes together at `mibps` MiB/s (0 or less: no cap). I/O already waiting keeps its turn. */
  setThrottle(mibps: number): void {
    this.cap.set(mibps);
  }

  usedChunks(): number {
    let n = 0;
    for (const c of this.chunks) if (c.owned) n++;
    return n;
  }

  read(buf: Buffer, bufOffset: number, length: number, position: number, cb: Done): void {
    const failure = this.refuse();
    if (failure) return process.nextTick(cb, failure);
    this.ioInflight++;
    if (this.cap.on) return this.afterTokens(length, cb, () => this.readPart(buf, bufOffset, length, position, cb));
    if (this.reads.sync(position, length)) return this.readSync(buf, bufOffset, length, position, cb);
    this.readPart(buf, bufOffset, length, position, cb);
  }

  /** A read on the event loop (page cache); cb still runs later, never inside read(). */
  private readSync(buf: Buffer, bufOffset: number, length: number, position: number, cb: Done): void {
    const err = this.reads.readSync(this.fd, buf, bufOffset, length, position);
    this.ioDone();
    process.nextTick(cb, err === null ? null : this.failed(err, 'read', position));
  }

  /** Throttled I/O: runs `go` once the bucket has `length` bytes for it (already counted in flight). */
  private afterTokens(length: number, cb: Done, go: () => void): void {
    void this.cap.take(length).then(() => {
      // The disk may have failed or been fault-injected while this waited.
      const failure = this.refuse();
      if (failure === undefined) return go();
      this.ioDone();
      cb(failure);
    });
  }

  private readPart(buf: Buffer, bufOffset: number, length: number, position: number, cb: Done): void {
    const started = this.reads.poolStart();
    fs.read(this.fd, buf, bufOffset, length, position, (err, n) => {
      this.reads.poolDone(started, err !== null);
      if (err === null && n > 0 && n < length) return this.readPart(buf, bufOffset + n, length - n, position + n, cb);
      this.ioDone();
      if (err) return cb(this.failed(err, 'read', position));
      if (n < length) return cb(this.failed(Object.assign(new Error('unexpected end of disk'), { code: 'EIO' }), 'read', position));
      cb(null);
    });
  }

  /** Writes chunk data (throttled when a throttle is set). */
  write(buf: Buffer, bufOffset: number, length: number, position: number, cb: Done): void {
    const failure = this.refuse();
    if (failure) return process.nextTick(cb, failure);
    this.ioInflight++;
    const data = bufOffset === 0 && length === buf.length ? buf : buf.subarray(bufOffset, bufOffset + length);
    if (this.cap.on) return this.afterTokens(length, cb, () => this.gatherer.add(data, position, cb));
    this.gatherer.add(data, position, cb);
  }

  /** Gives bytes back (a hole that reads as zeros); false where the disk cannot. Not throttled. */
  async punch(position: number, length: number): Promise<boolean> {
    if (this.refuse() !== undefined) return false;
    this.ioInflight++;
    try {
      return await this.holes.punch(position, length);
    } finally {
      this.ioDone();
    }
  }

  sync(cb: Done): void {
    const failure = this.refuse();
    if (failure) return process.nextTick(cb, failure);
    // Group commit: callers that arrive while a sync runs share the next one
    // (the running one may have started before their writes completed).
    this.syncQueued.push(cb);
    if (!this.syncRunning) this.startSync();
  }

  private startSync(): void {
    const waiters = this.syncQueued;
    this.syncQueued = [];
    this.syncRunning = true;
    this.ioInflight++;
    const started = performance.now();
    fs.fdatasync(this.fd, (err) => {
      this.stats.syncLatency.observeSince(started);
      this.syncRunning = false;
      if (this.syncQueued.length > 0) this.startSync();
      this.ioDone();
      const result = err ? this.failed(err, 'fdatasync', 0) : null;
      for (const w of waiters) w(result);
    });
  }

  persistRecord(chunk: Chunk, cb: Done): void {
    this.records.persist(chunk, cb);
  }

  /** Waits for in-flight I/O, syncs and closes the fd. Further I/O fails with DISK_FAILED. */
  async close(): Promise<void> {
    if (this.state === 'closed') return;
    this.state = 'closing';
    // Loop: a completion may chain more I/O (queued record writes, the next group sync).
    while (this.ioInflight > 0) await new Promise<void>((resolve) => this.ioDrainWaiters.push(resolve));
    const fd = this.fd;
    this.fd = -1;
    this.state = 'closed';
    await p<void>((cb) => fs.fdatasync(fd, cb)).catch((err: unknown) => this.log.warn({ err }, 'fdatasync at close failed'));
    await p<void>((cb) => fs.close(fd, cb));
  }

  private refuse(): Error | undefined {
    if (this.faulty) return new IoError(`disk ${this.id} fails all I/O (fault injection)`, { disk: this.id });
    if (this.fd < 0) return new DiskFailedError(`disk ${this.id} is closed`, { disk: this.id });
    if (this.failure !== undefined) return new DiskFailedError(`disk ${this.id} has failed (${this.failure})`, { disk: this.id });
    return undefined;
  }

  private ioDone(): void {
    if (--this.ioInflight === 0 && this.ioDrainWaiters.length > 0) {
      const waiters = this.ioDrainWaiters;
      this.ioDrainWaiters = [];
      for (const w of waiters) w();
    }
  }

  private failed(err: NodeJS.ErrnoException, what: string, position: number): IoError {
    this.ioErrors++;
    this.log.error({ err, position, ioErrors: this.ioErrors }, `disk ${what} failed`);
    if (this.failure === undefined && this.ioErrors >= DISK_FAIL_THRESHOLD && this.state === 'active') {
      this.failure = `${this.ioErrors} I/O errors, last: ${what} at ${position}: ${err.code ?? ''} ${err.message}`.trim();
      this.log.error({ ioErrors: this.ioErrors, path: this.path }, 'DISK FAILED: refusing all further I/O on it; its chunks must be rebuilt elsewhere');
      this.onStateChange?.(this);
    }
    return ioError(err, `disk ${this.id} ${what} at ${position}`, { disk: this.id, position });
  }
}
