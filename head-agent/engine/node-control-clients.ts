import { InvalidArgumentError } from '../../shared/errors.js';
import { call, storageNodeClient, type StorageNodeClient } from '../../shared/grpc.js';

// The head's gRPC clients of the storage nodes' control services, cached per
// control address, and what it fetches with them: the region bitmaps of a
// chunk (GetChunkRegions: `written` and `dirty`, see shared/region-bitmap.ts
// for what they mean and their bit helpers).

export interface ChunkRegions {
  regionSize: number;
  regionCount: number;
  written: Uint8Array;
  dirty: Uint8Array;
}

export interface ChunkAddress {
  volumeId: number;
  segment: number;
  slot: number;
}

export class NodeControlClients {
  private readonly clients = new Map<string, StorageNodeClient>();
  private readonly timeoutMs: number;

  constructor(timeoutMs = 5000) {
    this.timeoutMs = timeoutMs;
  }

  get(address: string): StorageNodeClient {
    let c = this.clients.get(address);
    if (c === undefined) {
      c = storageNodeClient(address);
      this.clients.set(address, c);
    }
    return c;
  }

  /** Fetches a chunk's bitmaps from the node at `controlAddress`; checks what the node says. */
  async regions(controlAddress: string, chunk: ChunkAddress, chunkSize: number): Promise<ChunkRegions> {
    const ref = { volumeId: chunk.volumeId, segment: chunk.segment, slot: chunk.slot };
    const reply = await call(this.get(controlAddress), 'GetChunkRegions', ref, this.timeoutMs);
    const regionSize = Number(reply.regionSize);
    if (!Number.isSafeInteger(regionSize) || regionSize <= 0 || regionSize > chunkSize) {
      throw new InvalidArgumentError(`storage node ${controlAddress} reports region size ${reply.regionSize} for a ${chunkSize}-byte chunk`, { node: controlAddress });
    }
    const regionCount = Math.ceil(chunkSize / regionSize);
    const bytes = Math.ceil(regionCount / 8);
    const fit = (b: Buffer | Uint8Array | undefined): Uint8Array => {
      const out = new Uint8Array(bytes);
      if (b !== undefined) out.set(b.subarray(0, bytes));
      return out;
    };
    return { regionSize, regionCount, written: fit(reply.written), dirty: fit(reply.dirty) };
  }

  close(): void {
    for (const c of this.clients.values()) c.close();
    this.clients.clear();
  }
}
