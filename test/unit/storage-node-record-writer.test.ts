import { randomBytes } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pino } from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { setRootLogger } from '../../shared/logger.js';
import { setBit, testBit } from '../../shared/region-bitmap.js';
import type { Chunk } from '../../storage-node/chunk.js';
import { ChunkStore, type ChunkIdentity } from '../../storage-node/chunk-store.js';
import { SECTOR, RECORD_FIXED, computeLayout, encodeRecord, uuidToBytes } from '../../storage-node/disk-format.js';
import { patch, read, write } from '../harness/chunk-file.js';

// Chunk record writes (storage-node/disk/record-writer.ts): on the event loop
// by default, coalesced per loop iteration, and crash-safe: a record write
// torn at any sector keeps every bit whose first write was acknowledged.
// 4 KiB regions: 64 MiB chunks with 16384 region bits (a 4320-byte slot, 9 sectors).

setRootLogger(pino({ level: process.env.VSKY_LOG_LEVEL ?? 'silent' }));

const MiB = 1024 * 1024;
const CHUNK = 64 * MiB;
const REGION = 4096;
const SIZE = 200 * MiB;
const layout = computeLayout(SIZE, CHUNK, CHUNK / REGION);

let dir: string;
let n = 0;
const nextPath = () => join(dir, `r${n++}.img`);

function identity(volumeId: number): ChunkIdentity {
  return { volumeId, volumeName: `v${volumeId}`, volumeSize: CHUNK, segment: 0, slot: 0, segmentCount: 1, replicas: 1, generation: 1, epoch: 1 };
}


const slotAt = (chunk: number, slot: number) => layout.tableOffset + (chunk * 2 + slot) * layout.recordSize;

async function freshChunk(volumeId: number): Promise<{ store: ChunkStore; path: string; chunk: Chunk }> {
  const store = new ChunkStore();
  const path = nextPath();
  const disk = await store.openDisk(path, { size: SIZE, chunkSize: CHUNK, regionSize: REGION });
  expect(disk.sb.regionBits).toBe(CHUNK / REGION);
  await store.allocate(disk.id, 0, identity(volumeId));
  return { store, path, chunk: store.lookup(volumeId, 0, 0)! };
}

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'vsky-records-'));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

describe('record writes', () => {
  it('first writes of one loop iteration share one record write, written on the event loop', async () => {
    const { store, path, chunk } = await freshChunk(1);
    const disk = store.diskList()[0]!;
    const seq = chunk.seq;
    const writesBefore = disk.stats.recordWrites;
    const syncBefore = disk.records.syncRuns;
    // 16 aligned 4 KiB first writes into 16 regions far apart (QD16 random first writes).
    const blocks = Array.from({ length: 16 }, (_, i) => ({ off: (i * 977 + 3) * REGION, data: randomBytes(REGION) }));
    await Promise.all(blocks.map((b) => write(chunk, b.off, b.data)));
    expect(disk.stats.recordWrites - writesBefore).toBeLessThanOrEqual(2);
    expect(chunk.seq - seq).toBe(disk.stats.recordWrites - writesBefore);
    expect(disk.records.syncRuns - syncBefore).toBeGreaterThanOrEqual(1); // on the loop (a slow one would send the next to the pool)
    await store.close();
    const again = new ChunkStore();
    await again.openDisk(path, { chunkSize: CHUNK });
    const c = again.lookup(1, 0, 0)!;
    for (const b of blocks) {
      expect(testBit(c.rec.bitmap, b.off / REGION)).toBe(true);
      expect((await read(c, b.off, REGION)).equals(b.data)).toBe(true);
    }
    await again.close();
  });

  it('through the thread pool (VSKY_RECORD_IO=pool) they coalesce and persist the same', async () => {
    process.env.VSKY_RECORD_IO = 'pool';
    let opened: Awaited<ReturnType<typeof freshChunk>>;
    try {
      opened = await freshChunk(2);
    } finally {
      delete process.env.VSKY_RECORD_IO;
    }
    const { store, path, chunk } = opened;
    const disk = store.diskList()[0]!;
    const seq = chunk.seq;
    const blocks = Array.from({ length: 64 }, (_, i) => ({ off: (i * 211 + 1) * REGION, data: randomBytes(REGION) }));
    await Promise.all(blocks.map((b) => write(chunk, b.off, b.data)));
    expect(disk.records.syncRuns).toBe(0);
    expect(chunk.seq - seq).toBeLessThan(16);
    await store.close();
    const again = new ChunkStore();
    await again.openDisk(path, { chunkSize: CHUNK });
    const c = again.lookup(2, 0, 0)!;
    for (const b of blocks) expect((await read(c, b.off, REGION)).equals(b.data)).toBe(true);
    await again.close();
  });

  it('close waits for a record write still scheduled', async () => {
    const { store, path, chunk } = await freshChunk(3);
    setBit(chunk.rec.bitmap, 5);
    const persisted = chunk.persist(); // scheduled for the check phase, not started yet
    await store.close();
    await persisted;
    const again = new ChunkStore();
    await again.openDisk(path, { chunkSize: CHUNK });
    expect(testBit(again.lookup(3, 0, 0)!.rec.bitmap, 5)).toBe(true);
    await again.close();
  });
});

describe('a record write torn at any sector keeps every acknowledged bit', () => {
  // A power loss during the record write of a new first write: any subset of
  // the target slot's sectors may have reached the disk (sector atomicity).
  const tears: [string, (sectors: number, bitSector: number) => number[]][] = [
    ['only the header sector', () => [0]],
    ['only the sector with the new bit', (_s, bit) => [bit]],
    ['every sector but the header', (s) => Array.from({ length: s - 1 }, (_, i) => i + 1)],
    ['every sector but the last', (s) => Array.from({ length: s - 1 }, (_, i) => i)],
    ['the header and the new bit, not the rest', (_s, bit) => [0, bit]],
  ];
  for (const [what, pick] of tears) {
    it(what, async () => {
      const { store, path, chunk } = await freshChunk(10);
      const disk = store.diskList()[0]!;
      // Acknowledged first writes, spread so the bitmap has bits in several sectors.
      const acked = [1, 700, 4000, 9000, 16000];
      for (const r of acked) await write(chunk, r * REGION, Buffer.alloc(REGION, r & 0xff));
      // The next record (one more bit, not acknowledged) as the writer would write it, into the other slot.
      const newBit = 12345;
      const next = { ...chunk.rec, bitmap: new Uint8Array(chunk.rec.bitmap), dirty: new Uint8Array(chunk.rec.dirty) };
      setBit(next.bitmap, newBit);
      const buf = encodeRecord(next, chunk.seq + 1, 0, uuidToBytes(disk.id), layout.recordSize);
      const target = slotAt(0, chunk.newestSlot === 0 ? 1 : 0);
      // A torn write only matters where old and new bytes differ: make the slot's old content differ everywhere.
      await store.close();
      await patch(path, target, randomBytes(layout.recordSize));
      const sectors = layout.recordSize / SECTOR;
      const bitSector = Math.floor((RECORD_FIXED + newBit / 8) / SECTOR);
      for (const s of pick(sectors, bitSector)) await patch(path, target + s * SECTOR, buf.subarray(s * SECTOR, (s + 1) * SECTOR));
      const again = new ChunkStore();
      await again.openDisk(path, { chunkSize: CHUNK });
      const c = again.lookup(10, 0, 0)!;
      for (const r of acked) {
        expect(testBit(c.rec.bitmap, r)).toBe(true);
        expect((await read(c, r * REGION, REGION)).equals(Buffer.alloc(REGION, r & 0xff))).toBe(true);
      }
      expect(testBit(c.rec.bitmap, newBit)).toBe(false); // not acknowledged, and its slot is not whole
      await again.close();
    });
  }
});
