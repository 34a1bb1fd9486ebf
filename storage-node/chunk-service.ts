import type { ChunkService } from '../shared/data-protocol/server/chunk-service.js';
import type { Chunk, Done } from './chunk.js';
import { readChunk, writeChunk, zeroChunk } from './chunk-io.js';
import type { ChunkStore, VolumeEntry } from './chunk-store.js';
import { clearDirty, markDirty } from './write-intent.js';

// The storage node behind the data-protocol server
// (shared/data-protocol/server/data-server.ts): the chunk store's lookups and
// epoch rule, chunk-io.ts's reads and writes, write-intent.ts's bits.

export class StoreChunkService implements ChunkService<Chunk, VolumeEntry> {
  constructor(private readonly store: ChunkStore) {}

  lookup(volumeId: number, segment: number, slot: number): Chunk | undefined {
    return this.store.lookup(volumeId, segment, slot);
  }

  admit(volumeId: number, epoch: number): VolumeEntry {
    return this.store.admit(volumeId, epoch);
  }

  ensureEpoch(volume: VolumeEntry, epoch: number): Promise<void> | undefined {
    return this.store.ensureEpoch(volume, epoch);
  }

  flush(volumeId: number): Promise<void> {
    return this.store.flush(volumeId);
  }

  fence(volumeId: number, epoch: number, generation: number): Promise<void> {
    return this.store.fence(volumeId, epoch, generation);
  }

  read(chunk: Chunk, offset: number, length: number, dst: Buffer, dstOffset: number, done: Done): void {
    readChunk(chunk, offset, length, dst, dstOffset, done);
  }

  write(chunk: Chunk, offset: number, data: Buffer | undefined, fua: boolean, done: Done): void {
    writeChunk(chunk, offset, data, fua, done);
  }

  zero(chunk: Chunk, offset: number, length: number, fua: boolean): Promise<void> {
    return zeroChunk(chunk, offset, length, fua);
  }

  markDirty(chunk: Chunk, offset: number, length: number): Promise<void> {
    return markDirty(chunk, offset, length);
  }

  clearDirty(chunk: Chunk, offset: number, length: number): void {
    void clearDirty(chunk, offset, length);
  }
}
