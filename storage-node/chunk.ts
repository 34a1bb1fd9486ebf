import { ChunkState, type ChunkRecordData } from './disk-format/chunk-record.js';
import type { DiskStats } from './disk-stats.js';

// One chunk of one disk: its record as last decoded or updated in memory, and
// the runtime state that serialises changes to it. The on-disk record is
// updated only through ChunkDisk.persistRecord (A/B slots, coalesced).

export type Done = (err: Error | null) => void;

/** What a chunk needs from the disk that holds it (implemented by Disk). */
export interface ChunkDisk {
  readonly id: string;
  /** Data-path counters of the disk (metrics). */
  readonly stats: DiskStats;
  read(buf: Buffer, bufOffset: number, length: number, position: number, cb: Done): void;
  write(buf: Buffer, bufOffset: number, length: number, position: number, cb: Done): void;
  /** fdatasync, group-committed: cb runs after a sync that started after this call. */
  sync(cb: Done): void;
  /** Gives bytes [position, position + length) back to the file system or device; false where it cannot (bytes unchanged). */
  punch(position: number, length: number): Promise<boolean>;
  /** Writes the chunk's current in-memory record (coalescing concurrent calls). */
  persistRecord(chunk: Chunk, cb: Done): void;
}

export class Chunk {
  readonly disk: ChunkDisk;
  readonly index: number;
  /** Absolute byte position of the chunk's data on the disk. */
  readonly dataOffset: number;
  readonly size: number;
  readonly regionSize: number;
  rec: ChunkRecordData;

  /** Sequence number of the newest valid record, and the slot (0 = A, 1 = B, -1 none) holding it. */
  seq: number;
  newestSlot: number;
  /** A record write is in flight; later persist requests wait here for the next write. */
  persisting = false;
  persistQueued: Done[] | undefined;

  /** Regions whose first write (zero-fill + bit + record) is under way: region -> settles when done. */
  initializing: Map<number, Promise<void>> | undefined;

  /** MARK_DIRTY record writes in flight (write-intent.ts). */
  markPersists = 0;
  /** A MARK_DIRTY record write failed: dirty bits set in memory may not be on disk. */
  dirtyUnsure = false;

  /** Data-protocol requests in flight on this chunk, and how many of them mutate it. */
  inflight = 0;
  mutating = 0;
  private drainWaiters: { mutatingOnly: boolean; resolve: () => void }[] | undefined;
  /** A control operation (allocate/free) is changing ownership. */
  busy = false;
  /** Primary forwarding's route rule (shared/data-protocol/server/data-connection.ts checkRoute). */
  routeEpoch = 0;
  routeGeneration = 0;

  constructor(disk: ChunkDisk, index: number, dataOffset: number, size: number, regionBits: number,
    rec: ChunkRecordData, seq: number, newestSlot: number) {
    this.disk = disk;
    this.index = index;
    this.dataOffset = dataOffset;
    this.size = size;
    this.regionSize = size / regionBits;
    this.rec = rec;
    this.seq = seq;
    this.newestSlot = newestSlot;
  }

  /** A snapshot's chunk: the data server refuses every mutation of it (READ_ONLY). */
  get readOnly(): boolean {
    return this.rec.readOnly;
  }

  get owned(): boolean {
    return this.rec.state === ChunkState.OWNED;
  }

  beginIo(mutating: boolean): void {
    this.inflight++;
    if (mutating) this.mutating++;
  }

  endIo(mutating: boolean): void {
    this.inflight--;
    if (mutating) this.mutating--;
    if (this.drainWaiters !== undefined) this.wakeDrainWaiters();
  }

  /** A read or write of this chunk served (the disk's metrics). */
  served(mutating: boolean, bytes: number, seconds: number): void {
    if (mutating) this.disk.stats.write(bytes, seconds);
    else this.disk.stats.read(bytes, seconds);
  }

  /** A request on this chunk failed (the disk's metrics; refused epochs included). */
  failed(err: unknown): void {
    this.disk.stats.failed(err);
  }

  /**
   * Resolves once no request (or, with mutatingOnly, no mutating request) is
   * in flight. FENCE waits only for writes: reads from the old lease holder
   * could otherwise keep it waiting forever.
   */
  drained(mutatingOnly = false): Promise<void> {
    if ((mutatingOnly ? this.mutating : this.inflight) === 0) return Promise.resolve();
    return new Promise((resolve) => (this.drainWaiters ??= []).push({ mutatingOnly, resolve }));
  }

  private wakeDrainWaiters(): void {
    const waiting = this.drainWaiters!.filter((w) => (w.mutatingOnly ? this.mutating : this.inflight) !== 0);
    const ready = this.drainWaiters!.filter((w) => (w.mutatingOnly ? this.mutating : this.inflight) === 0);
    this.drainWaiters = waiting.length > 0 ? waiting : undefined;
    for (const w of ready) w.resolve();
  }

  persist(): Promise<void> {
    return new Promise((resolve, reject) => this.disk.persistRecord(this, (err) => (err ? reject(err) : resolve())));
  }

  sync(): Promise<void> {
    return new Promise((resolve, reject) => this.disk.sync((err) => (err ? reject(err) : resolve())));
  }
}
