// What the data-protocol server needs from whoever stores chunks: the small
// interface between the wire (data-server.ts) and the storage node's chunk
// store (storage-node/chunk-service.ts implements it). The server owns the
// protocol (framing, back-pressure, statuses, reply batching); the service
// owns the bytes and the epoch rule (docs/design.md rule 3): admit() refuses a
// mutating request whose epoch is below the volume's, changing nothing.
// Hot-path calls take callbacks (no promise per read or write).

export type Done = (err: Error | null) => void;

/** One chunk as the server sees it: its size, and I/O accounting that FENCE and FLUSH wait on. */
export interface ServedChunk {
  readonly size: number;
  /** A snapshot's chunk: every mutating request is refused with READ_ONLY. */
  readonly readOnly: boolean;
  /**
   * The route rule of FORWARD_WRITE (data-connection.ts checkRoute): the
   * highest epoch and, under it, route generation this chunk took a forward
   * write under. In memory only, 0 at start.
   */
  routeEpoch: number;
  routeGeneration: number;
  beginIo(mutating: boolean): void;
  endIo(mutating: boolean): void;
  /** Accounting (metrics, no allocation): a read or a write of `bytes` served in `seconds`. */
  served(mutating: boolean, bytes: number, seconds: number): void;
  /** Accounting: a request on this chunk failed (refused epochs included). */
  failed(err: unknown): void;
}

export interface ChunkService<C extends ServedChunk = ServedChunk, V = unknown> {
  /** The chunk (volume, segment, slot) on this node, if it holds one. */
  lookup(volumeId: number, segment: number, slot: number): C | undefined;
  /** Epoch check of a mutating request: throws StaleEpochError below the volume's epoch. */
  admit(volumeId: number, epoch: number): V;
  /** Undefined when `epoch` is the volume's; else a promise that persists the raise first. */
  ensureEpoch(volume: V, epoch: number): Promise<void> | undefined;
  /** fdatasync of every chunk of the volume on this node. */
  flush(volumeId: number): Promise<void>;
  /** FENCE: raise the volume's epoch (and record the map's generation), waiting for mutations in flight. */
  fence(volumeId: number, epoch: number, generation: number): Promise<void>;
  read(chunk: C, offset: number, length: number, dst: Buffer, dstOffset: number, done: Done): void;
  /** `data` undefined writes zeros; `fua`: durable before `done`. */
  write(chunk: C, offset: number, data: Buffer | undefined, fua: boolean, done: Done): void;
  zero(chunk: C, offset: number, length: number, fua: boolean): Promise<void>;
  /** Write-intent bits on disk before it resolves. */
  markDirty(chunk: C, offset: number, length: number): Promise<void>;
  /** Bits cleared in memory now, persisted lazily. */
  clearDirty(chunk: C, offset: number, length: number): void;
}
