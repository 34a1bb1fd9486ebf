import type { VskyError } from '../../shared/errors.js';
import { errorForStatus } from '../../shared/data-protocol/status.js';
import { Flag, Opcode } from '../../shared/data-protocol/frame.js';
import type { FlushGroup } from './volume-flush.js';
import type { RequestCallback, RequestTarget } from '../../shared/data-protocol/client/data-request.js';
import type { NodeConnection } from '../../shared/data-protocol/client/node-connection.js';

// One replica of one segment: a chunk on a storage node, addressed on the wire
// by (volume id, segment index, replica slot). It speaks through the node's
// pooled connection and owns the mapping from reply status to typed error.
// The callback forms (submit*) are the hot path; the promise forms serve the
// control path and tests.

import type { ReplicaState } from '../../shared/replica-state.js';
export { REPLICA_STATES, type ReplicaState } from '../../shared/replica-state.js';

export interface ReplicaInfo {
  volumeId: number;
  volumeName: string;
  segment: number;
  slot: number;
  state: ReplicaState;
  serverId: string;
  diskId: string;
  /** Chunk index on the disk (identifies the chunk in map updates); 0 when unknown. */
  chunkIndex?: number;
  /** HOST:PORT of the node's gRPC control service (GetChunkRegions); '' when the map does not say. */
  controlAddress?: string;
}

/** Where a replica lives, as a map tells it (ReplicaLocation). */
export interface ReplicaPlace {
  slot: number;
  dataAddress: string;
  diskId: string;
  chunkIndex: number;
}

export class Replica implements RequestTarget {
  readonly conn: NodeConnection;
  readonly volumeId: number;
  readonly volumeName: string;
  readonly segment: number;
  readonly slot: number;
  readonly serverId: string;
  readonly diskId: string;
  readonly chunkIndex: number;
  readonly controlAddress: string;
  /** The manager's view, as this head applies it (see Attachments.updateMap). */
  state: ReplicaState;
  /**
   * This head saw the replica fail and has not yet heard the manager record
   * it as out of sync: it is neither read nor written, and writes that skip
   * it wait for that record (replica-failures.ts). Cleared when the manager
   * confirms (state becomes 'stale') or its map says otherwise.
   */
  suspect = false;
  /**
   * This head knows the replica missed writes (it was stale here): a map may
   * make it resyncing (written, not read), but it becomes readable only after
   * a resync run by this head finished (maps can arrive out of order).
   */
  mustResync: boolean;
  /** The node's flush group (volume-flush.ts); assigned by the volume (undefined until then). */
  flushGroup: FlushGroup | undefined;
  /** Reads served by this replica (stats, tests). */
  reads = 0;

  constructor(conn: NodeConnection, info: ReplicaInfo) {
    this.conn = conn;
    this.volumeId = info.volumeId;
    this.volumeName = info.volumeName;
    this.segment = info.segment;
    this.slot = info.slot;
    this.state = info.state;
    this.mustResync = info.state === 'stale';
    this.serverId = info.serverId;
    this.diskId = info.diskId;
    this.chunkIndex = info.chunkIndex ?? 0;
    this.controlAddress = info.controlAddress ?? '';
  }

  /** Recorded stale (by the manager's answer or its map): neither read nor written. */
  markStale(): void {
    this.state = 'stale';
    this.suspect = false;
    this.mustResync = true;
  }

  /** Same chunk as `place` (a map update keeps this replica object, with its in-flight requests). */
  isAt(place: ReplicaPlace): boolean {
    return place.slot === this.slot && place.dataAddress === this.conn.address && place.diskId === this.diskId
      && place.chunkIndex === this.chunkIndex;
  }

  get address(): string {
    return this.conn.address;
  }

  get readable(): boolean {
    return this.state === 'in_sync' && !this.suspect;
  }

  /** In-sync and resyncing replicas take every write (docs/design.md: data path). */
  get writable(): boolean {
    return this.state !== 'stale' && !this.suspect;
  }

  /** "replica 1 of segment 3 of volume vm1 on 127.0.0.1:7710" */
  describe(): string {
    return `replica ${this.slot} of segment ${this.segment} of volume ${this.volumeName} on ${this.conn.address}`;
  }

  replyError(opcode: number, status: number, message: string): VskyError {
    return errorForStatus(opcode, status, message, this.describe(),
      { volume: this.volumeName, segment: this.segment, slot: this.slot, node: this.conn.address });
  }

  // Hot path: callback forms. The caller calls noteWritten() when a mutating
  // request completes.

  submitRead(offset: number, dest: Buffer, cb: RequestCallback): void {
    this.conn.submit(this, Opcode.READ, 0, 0, offset, dest.length, dest, 0, cb);
  }

  submitWrite(epoch: number, offset: number, data: Buffer, fua: boolean, cb: RequestCallback): void {
    this.conn.submit(this, Opcode.WRITE, fua ? Flag.FUA : 0, epoch, offset, data.length, data, 0, cb);
  }

  submitWriteZeroes(epoch: number, offset: number, length: number, fua: boolean, cb: RequestCallback): void {
    this.conn.submit(this, Opcode.WRITE_ZEROES, fua ? Flag.FUA : 0, epoch, offset, length, undefined, 0, cb);
  }

  submitDiscard(epoch: number, offset: number, length: number, cb: RequestCallback): void {
    this.conn.submit(this, Opcode.DISCARD, 0, epoch, offset, length, undefined, 0, cb);
  }

  /**
   * A mutating request to this replica completed (successfully or not). Marked
   * on completion, not on submission: a write that completes after a flush
   * cleared the flag must still be covered by the next flush.
   */
  noteWritten(fua: boolean): void {
    // A FUA write is durable on reply; anything else may sit in the disk's cache.
    if (!fua && this.flushGroup !== undefined) this.flushGroup.dirty = true;
  }

  // Control path: promise forms.

  read(offset: number, dest: Buffer): Promise<void> {
    return this.conn.request(this, Opcode.READ, 0, 0, offset, dest.length, dest);
  }

  write(epoch: number, offset: number, data: Buffer, fua: boolean): Promise<void> {
    return this.mutation(this.conn.request(this, Opcode.WRITE, fua ? Flag.FUA : 0, epoch, offset, data.length, data), fua);
  }

  writeZeroes(epoch: number, offset: number, length: number, fua: boolean): Promise<void> {
    return this.mutation(this.conn.request(this, Opcode.WRITE_ZEROES, fua ? Flag.FUA : 0, epoch, offset, length, undefined), fua);
  }

  discard(epoch: number, offset: number, length: number): Promise<void> {
    return this.mutation(this.conn.request(this, Opcode.DISCARD, 0, epoch, offset, length, undefined), false);
  }

  /** The node fdatasyncs every disk holding a chunk of this volume. */
  flush(epoch: number): Promise<void> {
    return this.conn.request(this, Opcode.FLUSH, 0, epoch, 0, 0, undefined);
  }

  /** Raises the volume's epoch on the node, for all its chunks there (persisted before the reply). */
  fence(epoch: number, generation: number): Promise<void> {
    return this.conn.request(this, Opcode.FENCE, 0, epoch, 0, 0, undefined, generation);
  }

  /** Sets the write-intent bits of the regions covering the range (persisted before the reply). */
  markDirty(epoch: number, offset: number, length: number): Promise<void> {
    return this.conn.request(this, Opcode.MARK_DIRTY, 0, epoch, offset, length, undefined);
  }

  /** Clears the write-intent bits of the regions covering the range. */
  clearDirty(epoch: number, offset: number, length: number): Promise<void> {
    return this.conn.request(this, Opcode.CLEAR_DIRTY, 0, epoch, offset, length, undefined);
  }

  private mutation(p: Promise<void>, fua: boolean): Promise<void> {
    return p.finally(() => this.noteWritten(fua));
  }
}
