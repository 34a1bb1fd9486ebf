import { REGION_BITS_PER_CHUNK } from '../shared/constants.js';
import { InvalidArgumentError } from '../shared/errors.js';
import { call, storageNodeClient, type StorageNodeClient } from '../shared/grpc.js';

// The region bitmaps of a chunk, fetched from its storage node's control
// service (GetChunkRegions): `written` (regions ever written: what a resync
// copies, docs/design.md rule 8) and `dirty` (write-intent bits: what a new holder
// reconciles, rule 4). Bit r is bit (r & 7) of byte (r >> 3), least
// significant first (storage-node/region-map.ts). Clients are cached per
// control address.

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

export function testBit(map: Uint8Array, r: number): boolean {
  return ((map[r >> 3] ?? 0) & (1 << (r & 7))) !== 0;
}

/** a |= b (b may be shorter). */
export function orInto(a: Uint8Array, b: Uint8Array): void {
  const n = Math.min(a.length, b.length);
  for (let i = 0; i < n; i++) a[i]! |= b[i]!;
}

/** A bitmap with every one of `count` regions set (when the written map cannot be had). */
export function allRegions(count: number): Uint8Array {
  const map = new Uint8Array(Math.ceil(count / 8));
  for (let r = 0; r < count; r++) map[r >> 3]! |= 1 << (r & 7);
  return map;
}

/** Runs of set bits in [from, count) as [first, last] region pairs, each at most maxLen regions. */
export function setRuns(map: Uint8Array, from: number, count: number, maxLen: number): [number, number][] {
  const out: [number, number][] = [];
  let r = from;
  while (r < count) {
    if (!testBit(map, r)) {
      r++;
      continue;
    }
    const first = r;
    while (r + 1 < count && r + 1 - first < maxLen && testBit(map, r + 1)) r++;
    out.push([first, r]);
    r++;
  }
  return out;
}

/** The default region size of a chunk (what nodes use: REGION_BITS_PER_CHUNK regions). */
export function defaultRegionSize(chunkSize: number): number {
  return Math.max(1, Math.ceil(chunkSize / REGION_BITS_PER_CHUNK));
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
